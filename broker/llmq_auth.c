/*  llmq_auth.c - the broker's CURVE gatekeeper (see llmq_auth.h).

    Contents: the struct; new and destroy; server_apply (CURVE server, ZAP
    domain, monitor); the ZAP handler (one request = 7+ frames in, 6 out);
    the monitors (handshake failures before ZAP); the selftest.

    The handler answers at once from the zcertstore of the request's
    domain; an unknown domain is refused, so a socket we did not configure
    can never be opened by accident.
*/
#include "llmq_auth.h"
#include "llmq_curve.h"

#include <sys/stat.h>

#define s_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define s_DOMAIN_FRONTEND "llmq-frontend"
#define s_DOMAIN_BACKEND "llmq-backend"
#define s_SEEN_MAX 4096 //  Peers remembered for log-once; then log none

struct _llmq_auth_t {
    zsock_t *handler;            //  REP bound to the ZAP endpoint
    zcertstore_t *store[2];      //  Allowed keys: clients, workers
    zsock_t *monitor[2];         //  PAIR: handshake events per ROUTER
    zhashx_t *seen;              //  "side peer" keys already reported
    llmq_auth_denied_fn *denied; //  Owner's callback, or NULL
    void *denied_arg;            //  Its argument
};

static const char *s_domains[2] = {s_DOMAIN_FRONTEND, s_DOMAIN_BACKEND};

static bool s_is_dir(const char *path)
{
    struct stat st;
    return path && *path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

llmq_auth_t *llmq_auth_new(const char *client_dir, const char *worker_dir,
                           char *err, size_t size)
{
    const char *dirs[2] = {client_dir, worker_dir};
    for (int i = 0; i < 2; i++)
        if (!s_is_dir(dirs[i])) {
            snprintf(err, size, "%s '%s' is not a directory",
                     i ? "--worker-keys" : "--client-keys",
                     dirs[i] ? dirs[i] : "");
            return NULL;
        }
    llmq_auth_t *self = (llmq_auth_t *)calloc(1, sizeof(*self));
    if (!self) {
        snprintf(err, size, "out of memory");
        return NULL;
    }
    self->handler = zsock_new(ZMQ_REP);
    self->seen = zhashx_new();
    for (int i = 0; i < 2; i++)
        self->store[i] = zcertstore_new(dirs[i]);
    if (!self->handler || !self->seen || !self->store[0] || !self->store[1] ||
        zsock_bind(self->handler, s_ZAP_ENDPOINT) != 0) {
        snprintf(err, size, "cannot start the ZAP handler: %s",
                 zmq_strerror(zmq_errno()));
        llmq_auth_destroy(&self);
        return NULL;
    }
    zsock_set_rcvtimeo(self->handler, 0);
    return self;
}

void llmq_auth_destroy(llmq_auth_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_auth_t *self = *self_p;
    for (int i = 0; i < 2; i++) {
        zsock_destroy(&self->monitor[i]);
        zcertstore_destroy(&self->store[i]);
    }
    zsock_destroy(&self->handler);
    zhashx_destroy(&self->seen);
    free(self);
    *self_p = NULL;
}

int llmq_auth_server_apply(llmq_auth_t *self, zsock_t *sock, zcert_t *cert,
                           llmq_auth_side_t side)
{
    zcert_apply(cert, sock);
    zsock_set_curve_server(sock, 1);
    zsock_set_zap_domain(sock, s_domains[side]);
    char endpoint[64];
    snprintf(endpoint, sizeof(endpoint), "inproc://llmq-auth-monitor-%p-%d",
             (void *)self, (int)side);
    int events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                 ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL;
    if (zmq_socket_monitor(zsock_resolve(sock), endpoint, events) != 0)
        return -1;
    zsock_destroy(&self->monitor[side]);
    self->monitor[side] = zsock_new(ZMQ_PAIR);
    if (!self->monitor[side] ||
        zsock_connect(self->monitor[side], "%s", endpoint) != 0)
        return -1;
    zsock_set_rcvtimeo(self->monitor[side], 0);
    return 0;
}

void llmq_auth_set_denied(llmq_auth_t *self, llmq_auth_denied_fn *fn, void *arg)
{
    self->denied = fn;
    self->denied_arg = arg;
}

size_t llmq_auth_poll_items(llmq_auth_t *self, zmq_pollitem_t *items,
                            size_t max)
{
    size_t n = 0;
    zsock_t *socks[3] = {self->handler, self->monitor[0], self->monitor[1]};
    for (int i = 0; i < 3 && n < max; i++)
        if (socks[i])
            items[n++] =
                (zmq_pollitem_t){zsock_resolve(socks[i]), 0, ZMQ_POLLIN, 0};
    return n;
}

//  Report a refusal, with first = never reported before (bounded memory).
static void s_report(llmq_auth_t *self, llmq_auth_side_t side,
                     const char *reason, const char *peer)
{
    char key[300];
    snprintf(key, sizeof(key), "%d %s", (int)side, peer);
    bool first = false;
    if (!zhashx_lookup(self->seen, key) &&
        zhashx_size(self->seen) < s_SEEN_MAX) {
        zhashx_insert(self->seen, key, (void *)1);
        first = true;
    }
    if (self->denied)
        self->denied(side, reason, peer, first, self->denied_arg);
}

//  --------------------------------------------------------------------------
//  ZAP: version, request id, domain, address, identity, mechanism,
//  credentials... in; version, request id, status code and text, user id,
//  metadata out.

static void s_zap_reply(zsock_t *sock, const char *request_id, bool ok,
                        const char *user)
{
    zstr_sendx(sock, "1.0", request_id, ok ? "200" : "400",
               ok ? "OK" : "not allowed", ok ? user : "", "", NULL);
}

//  Is this CURVE key allowed in this domain? Sets *side.
static bool s_allowed(llmq_auth_t *self, const char *domain,
                      const char *mechanism, const char *key, int *side)
{
    *side = -1;
    for (int i = 0; i < 2; i++)
        if (streq(domain, s_domains[i]))
            *side = i;
    return *side >= 0 && streq(mechanism, "CURVE") && key &&
           zcertstore_lookup(self->store[*side], key) != NULL;
}

//  Answer one request; false when none was waiting.
static bool s_zap_handle(llmq_auth_t *self)
{
    zmsg_t *req = zmsg_recv(self->handler);
    if (!req)
        return false;
    char *version = zmsg_popstr(req);
    char *request_id = zmsg_popstr(req);
    char *domain = zmsg_popstr(req);
    char *address = zmsg_popstr(req);
    char *identity = zmsg_popstr(req);
    char *mechanism = zmsg_popstr(req);
    zframe_t *cred = zmsg_pop(req);
    char key[LLMQ_CURVE_KEY_LEN + 1] = "";
    if (cred && zframe_size(cred) == 32)
        zmq_z85_encode(key, zframe_data(cred), 32);
    int side = -1;
    bool ok = version && streq(version, "1.0") && domain && mechanism &&
              s_allowed(self, domain, mechanism, *key ? key : NULL, &side);
    s_zap_reply(self->handler, request_id ? request_id : "", ok, key);
    if (!ok && side >= 0)
        s_report(self, (llmq_auth_side_t)side, "unknown_key",
                 *key ? key : (address ? address : "?"));
    zframe_destroy(&cred);
    zstr_free(&version);
    zstr_free(&request_id);
    zstr_free(&domain);
    zstr_free(&address);
    zstr_free(&identity);
    zstr_free(&mechanism);
    zmsg_destroy(&req);
    return true;
}

//  --------------------------------------------------------------------------
//  Monitors: frame 1 = event (u16) + value (u32), frame 2 = the peer's
//  endpoint for a bound socket ("tcp://10.0.0.7:51234").

static bool s_monitor_handle(llmq_auth_t *self, int side)
{
    zmsg_t *event = zmsg_recv(self->monitor[side]);
    if (!event)
        return false;
    zframe_t *head = zmsg_first(event);
    char *endpoint =
        zmsg_size(event) >= 2 ? zframe_strdup(zmsg_next(event)) : NULL;
    if (head && zframe_size(head) >= 2 && endpoint) {
        //  Once per address, not per connection: drop the port.
        char *colon = strrchr(endpoint, ':');
        if (colon && colon > endpoint + 6)
            *colon = 0;
        s_report(self, (llmq_auth_side_t)side, "handshake", endpoint);
    }
    free(endpoint);
    zmsg_destroy(&event);
    return true;
}

void llmq_auth_service(llmq_auth_t *self, const zmq_pollitem_t *items,
                       size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (!(items[i].revents & ZMQ_POLLIN))
            continue;
        if (items[i].socket == zsock_resolve(self->handler))
            for (int k = 0; k < 64 && s_zap_handle(self); k++)
                ;
        for (int s = 0; s < 2; s++)
            if (self->monitor[s] &&
                items[i].socket == zsock_resolve(self->monitor[s]))
                for (int k = 0; k < 64 && s_monitor_handle(self, s); k++)
                    ;
    }
}

//  --------------------------------------------------------------------------
//  Self test: a CURVE ROUTER guarded by the handler, and DEALERs with good,
//  wrong-side, later-added and no keys.

#include "llmq_check.h"
#define CHECK(x) LLMQ_CHECK_OR(x, rc = 1; goto done)

static int s_test_denied = 0;
static void s_test_on_denied(llmq_auth_side_t side, const char *reason,
                             const char *peer, bool first, void *arg)
{
    (void)side, (void)reason, (void)peer, (void)first, (void)arg;
    s_test_denied++;
}

//  Serve the handler until router gets a message (returns it) or the
//  denial count passes denied_before, or timeout_ms.
static char *s_test_pump(llmq_auth_t *auth, zsock_t *router, int denied_before,
                         int timeout_ms)
{
    int64_t end = zclock_mono() + timeout_ms;
    while (zclock_mono() < end && s_test_denied <= denied_before) {
        zmq_pollitem_t items[4];
        size_t n = llmq_auth_poll_items(auth, items, 3);
        items[n] = (zmq_pollitem_t){zsock_resolve(router), 0, ZMQ_POLLIN, 0};
        zmq_poll(items, (int)n + 1, 50);
        llmq_auth_service(auth, items, n);
        if (items[n].revents & ZMQ_POLLIN) {
            zmsg_t *msg = zmsg_recv(router);
            char *text = msg && zmsg_size(msg) == 2 ? zmsg_popstr(msg) : NULL;
            free(text);
            text = msg ? zmsg_popstr(msg) : NULL;
            zmsg_destroy(&msg);
            return text;
        }
    }
    return NULL;
}

static zsock_t *s_test_dealer(const char *endpoint, zcert_t *cert,
                              const char *server_key)
{
    zsock_t *d = zsock_new(ZMQ_DEALER);
    if (cert)
        llmq_curve_client_apply(d, cert, server_key);
    zsock_connect(d, "%s", endpoint);
    zstr_send(d, "hello");
    return d;
}

int llmq_auth_test(bool verbose)
{
    int rc = 0;
    char dir[] = "/tmp/llmq-auth-test-XXXXXX", err[256], path[256];
    zsock_t *router = NULL, *d = NULL;
    char *ep = NULL, *got = NULL;
    llmq_auth_t *auth = NULL;
    zcert_t *server = zcert_new(), *client = zcert_new(), *worker = zcert_new(),
            *late = zcert_new();
    CHECK(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/clients", dir);
    zsys_dir_create(path);
    snprintf(path, sizeof(path), "%s/workers", dir);
    zsys_dir_create(path);
    snprintf(path, sizeof(path), "%s/clients/c1", dir);
    zcert_save_public(client, path);
    snprintf(path, sizeof(path), "%s/workers/w1", dir);
    zcert_save_public(worker, path);
    CHECK(llmq_auth_new("/nonexistent", "/tmp", err, sizeof(err)) == NULL);
    char cdir[256], wdir[256];
    snprintf(cdir, sizeof(cdir), "%s/clients", dir);
    snprintf(wdir, sizeof(wdir), "%s/workers", dir);
    auth = llmq_auth_new(cdir, wdir, err, sizeof(err));
    CHECK(auth);
    llmq_auth_set_denied(auth, s_test_on_denied, NULL);
    router = zsock_new(ZMQ_ROUTER);
    CHECK(llmq_auth_server_apply(auth, router, server, LLMQ_AUTH_FRONTEND) ==
          0);
    CHECK(zsock_bind(router, "tcp://127.0.0.1:*") > 0);
    ep = zsock_last_endpoint(router);
    const char *skey = zcert_public_txt(server);

    //  An allowed client gets through.
    d = s_test_dealer(ep, client, skey);
    got = s_test_pump(auth, router, 1000, 5000);
    CHECK(got && streq(got, "hello"));
    zstr_free(&got);
    zsock_destroy(&d);
    //  A worker key on the frontend, and a peer without CURVE, are refused.
    int before = s_test_denied;
    d = s_test_dealer(ep, worker, skey);
    got = s_test_pump(auth, router, before, 5000);
    CHECK(!got && s_test_denied > before);
    zsock_destroy(&d);
    before = s_test_denied;
    d = s_test_dealer(ep, NULL, NULL);
    got = s_test_pump(auth, router, before, 5000);
    CHECK(!got && s_test_denied > before);
    zsock_destroy(&d);
    //  A key added to the directory later is allowed without a restart.
    snprintf(path, sizeof(path), "%s/clients/late", dir);
    zcert_save_public(late, path);
    d = s_test_dealer(ep, late, skey);
    got = s_test_pump(auth, router, 1000, 5000);
    CHECK(got && streq(got, "hello"));
    zstr_free(&got);
done:
    zstr_free(&got);
    zsock_destroy(&d);
    zsock_destroy(&router);
    llmq_auth_destroy(&auth);
    zcert_destroy(&server);
    zcert_destroy(&client);
    zcert_destroy(&worker);
    zcert_destroy(&late);
    zstr_free(&ep);
    const char *files[] = {"clients/c1", "clients/late", "workers/w1"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    zsys_dir_delete("%s/clients", dir);
    zsys_dir_delete("%s/workers", dir);
    zsys_dir_delete("%s", dir);
    if (verbose && !rc)
        printf("llmq_auth: OK\n");
    return rc;
}
