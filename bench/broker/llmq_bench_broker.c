/*  llmq_bench_broker.c - load generator, echo worker and raw zmq_proxy
    baseline for the broker benchmark (bench/broker/bench_broker.py).

    llmq-bench-broker proxy  --frontend EP --backend EP
        The baseline: a raw zmq_proxy, ROUTER (clients) to DEALER (workers).
        No queue, no credit, no dedupe, no heartbeats: the upper bound of a
        ZeroMQ hop on this machine.
    llmq-bench-broker worker --connect EP --mode raw|llmq [--capacity N]
        Echo worker. Both modes decode the request header and encode a
        `res` header with llmq_msg, so both sides of the comparison pay the
        same worker cost; llmq mode also says hello and grants credit.
    llmq-bench-broker client --connect EP [--requests N] [--window W]
                             [--size BYTES] [--rate PER_S] [--model M]
                             [--tenant NAME]
        Sends `req`s with a BYTES payload, keeping W outstanding (or paced
        at PER_S), and prints one JSON line: count, seconds, rps, latency
        percentiles in microseconds.

    Every mode prints `ready llmq-bench-broker ...` once connected/bound.
*/
#include "llmq_msg.h"

#include <getopt.h>
#include <inttypes.h>
#include <math.h>

typedef struct {
    const char *mode;
    const char *frontend, *backend, *connect;
    const char *worker_mode;
    const char *model;
    const char *tenant; //  client: the declared tenant, or NULL
    long capacity, requests, window, size, rate;
} s_args_t;

static int64_t s_now_us(void)
{
    return zclock_usecs();
}

static int s_proxy(s_args_t *args)
{
    zsock_t *frontend = zsock_new(ZMQ_ROUTER);
    zsock_t *backend = zsock_new(ZMQ_DEALER);
    zsock_set_sndhwm(frontend, 1000000);
    zsock_set_rcvhwm(frontend, 200000);
    zsock_set_sndhwm(backend, 200000);
    zsock_set_rcvhwm(backend, 200000);
    if (zsock_bind(frontend, "%s", args->frontend) == -1 ||
        zsock_bind(backend, "%s", args->backend) == -1) {
        fprintf(stderr, "proxy: cannot bind\n");
        return 1;
    }
    char *fe = zsock_last_endpoint(frontend),
         *be = zsock_last_endpoint(backend);
    printf("ready llmq-bench-broker frontend=%s backend=%s\n", fe, be);
    fflush(stdout);
    free(fe);
    free(be);
    zmq_proxy(zsock_resolve(frontend), zsock_resolve(backend), NULL);
    zsock_destroy(&frontend);
    zsock_destroy(&backend);
    return 0;
}

/*  A DEALER with deep queues, named bench-<role>-<pid> (into identity),
    connected to --connect. */
static zsock_t *s_dealer(s_args_t *args, const char *role, char *identity,
                         size_t size)
{
    zsock_t *sock = zsock_new(ZMQ_DEALER);
    zsock_set_sndhwm(sock, 200000);
    zsock_set_rcvhwm(sock, 200000);
    snprintf(identity, size, "bench-%s-%d", role, (int)getpid());
    zsock_set_identity(sock, identity);
    zsock_connect(sock, "%s", args->connect);
    return sock;
}

//  Hello and every slot's credit: at the start, and again when the broker
//  answers "hello first" (a machine so loaded that it took us for dead).
static void s_worker_hello(zsock_t *sock, s_args_t *args, const char *identity)
{
    llmq_msg_t *hello = llmq_msg_new(LLMQ_MSG_HELLO);
    llmq_msg_set_worker(hello, identity);
    llmq_msg_set_pool(hello, "bench");
    llmq_msg_set_provider(hello, "echo");
    const char *models[] = {args->model};
    llmq_msg_set_models(hello, models, 1);
    llmq_msg_set_capacity(hello, args->capacity);
    llmq_msg_set_version(hello, "bench");
    llmq_msg_send(&hello, sock);
    llmq_msg_t *credit = llmq_msg_new(LLMQ_MSG_CREDIT);
    llmq_msg_set_n(credit, args->capacity);
    llmq_msg_send(&credit, sock);
}

//  A heartbeat once a second.
static void s_worker_beat(zsock_t *sock, int64_t *next_hb)
{
    if (zclock_mono() < *next_hb)
        return;
    llmq_msg_t *hb = llmq_msg_new(LLMQ_MSG_HB);
    llmq_msg_send(&hb, sock);
    *next_hb = zclock_mono() + 1000;
}

static int s_worker(s_args_t *args)
{
    bool llmq = streq(args->worker_mode, "llmq");
    char identity[64];
    zsock_t *sock = s_dealer(args, "worker", identity, sizeof identity);
    if (llmq)
        s_worker_hello(sock, args, identity);
    printf("ready llmq-bench-broker worker=%s\n", identity);
    fflush(stdout);
    int64_t next_hb = zclock_mono() + 1000;
    int64_t next_hello = 0;
    while (!zsys_interrupted) {
        zmq_pollitem_t item = {zsock_resolve(sock), 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 500) == -1)
            break;
        long answered = 0;
        //  Drain what is there, then grant the credit back in one message.
        while (zsock_events(sock) & ZMQ_POLLIN) {
            zmsg_t *msg = zmsg_recv(sock);
            if (!msg)
                break;
            //  raw: [client routing id] header payload; llmq: header payload
            zframe_t *rid = llmq ? NULL : zmsg_pop(msg);
            zframe_t *header = zmsg_pop(msg);
            zframe_t *payload = zmsg_pop(msg);
            zmsg_destroy(&msg);
            llmq_msg_t *req = header ? llmq_msg_decode(zframe_data(header),
                                                       zframe_size(header),
                                                       payload != NULL, NULL, 0)
                                     : NULL;
            zframe_destroy(&header);
            if (req && llmq_msg_type(req) == LLMQ_MSG_REQ) {
                llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
                llmq_msg_set_id(res, llmq_msg_id(req));
                llmq_msg_set_ok(res, true);
                llmq_msg_set_usage_prompt_tokens(res, 1);
                llmq_msg_set_usage_completion_tokens(res, 1);
                llmq_msg_set_usage_total_tokens(res, 2);
                zframe_t *out = llmq_msg_encode(res, NULL, 0);
                llmq_msg_destroy(&res);
                if (rid)
                    zframe_send(&rid, sock, ZFRAME_MORE);
                zframe_send(&out, sock, ZFRAME_MORE);
                zframe_send(&payload, sock, 0);
                answered++;
            } else if (req && llmq_msg_type(req) == LLMQ_MSG_ERROR &&
                       !llmq_msg_id(req) && llmq_msg_message(req) &&
                       streq(llmq_msg_message(req), "hello first") &&
                       zclock_mono() >= next_hello) {
                s_worker_hello(sock, args, identity);
                answered = 0; //  The hello granted every slot
                next_hello = zclock_mono() + 1000;
            }
            llmq_msg_destroy(&req);
            if (llmq) //  A long drain must not read as silence
                s_worker_beat(sock, &next_hb);
            zframe_destroy(&rid);
            zframe_destroy(&payload);
        }
        if (llmq && answered) {
            llmq_msg_t *credit = llmq_msg_new(LLMQ_MSG_CREDIT);
            llmq_msg_set_n(credit, answered);
            llmq_msg_send(&credit, sock);
        }
        if (llmq)
            s_worker_beat(sock, &next_hb);
    }
    zsock_destroy(&sock);
    return 0;
}

static int s_compare(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int s_client(s_args_t *args)
{
    char identity[64];
    zsock_t *sock = s_dealer(args, "client", identity, sizeof identity);
    long n = args->requests;
    int64_t *sent_at = (int64_t *)calloc((size_t)n, sizeof(int64_t));
    int64_t *latency = (int64_t *)calloc((size_t)n, sizeof(int64_t));
    //  A chat request body of exactly the requested size, in msgpack:
    //  {"messages": [{"role": "user", "content": "xxx..."}]}, so that real
    //  workers (llmq-worker --provider echo) accept it too.
    size_t size = (size_t)(args->size < 64      ? 64
                           : args->size > 60000 ? 60000
                                                : args->size);
    uint8_t *body = (uint8_t *)malloc(size);
    static const uint8_t head[] = {0x81, 0xa8, 'm',  'e',  's',  's', 'a',  'g',
                                   'e',  's',  0x91, 0x82, 0xa4, 'r', 'o',  'l',
                                   'e',  0xa4, 'u',  's',  'e',  'r', 0xa7, 'c',
                                   'o',  'n',  't',  'e',  'n',  't', 0xda};
    memcpy(body, head, sizeof(head));
    size_t len = size - sizeof(head) - 2;
    body[sizeof(head)] = (uint8_t)(len >> 8);
    body[sizeof(head) + 1] = (uint8_t)len;
    memset(body + sizeof(head) + 2, 'x', len);
    printf("ready llmq-bench-broker client=%s\n", identity);
    fflush(stdout);

    long sent = 0, done = 0, errors = 0;
    int64_t start = s_now_us();
    int64_t deadline = zclock_mono() + 300000;
    while (done < n && zclock_mono() < deadline && !zsys_interrupted) {
        int64_t now = s_now_us();
        //  Send what the window (or the pace) allows.
        while (sent < n && sent - done < args->window &&
               (args->rate <= 0 ||
                sent < (now - start) * args->rate / 1000000 + 1)) {
            llmq_msg_t *req = llmq_msg_new(LLMQ_MSG_REQ);
            char id[24];
            snprintf(id, sizeof(id), "%ld", sent);
            llmq_msg_set_id(req, id);
            llmq_msg_set_op(req, "chat");
            llmq_msg_set_model(req, args->model);
            if (args->tenant)
                llmq_msg_set_tenant(req, args->tenant);
            llmq_msg_set_payload_mem(req, body, size);
            sent_at[sent] = s_now_us();
            llmq_msg_send(&req, sock);
            sent++;
        }
        long timeout = 100;
        if (args->rate > 0 && sent < n) {
            int64_t next = start + (sent * 1000000) / args->rate;
            timeout = next > now ? (long)((next - now) / 1000) : 0;
        }
        zmq_pollitem_t item = {zsock_resolve(sock), 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, timeout) == -1)
            break;
        while (zsock_events(sock) & ZMQ_POLLIN) {
            llmq_msg_t *res = llmq_msg_recv(sock);
            if (!res)
                break;
            if (llmq_msg_type(res) == LLMQ_MSG_RES) {
                long index =
                    llmq_msg_id(res) ? strtol(llmq_msg_id(res), NULL, 10) : -1;
                if (index >= 0 && index < n && !latency[index]) {
                    latency[index] = s_now_us() - sent_at[index];
                    done++;
                    if (!llmq_msg_ok(res))
                        errors++;
                }
            }
            llmq_msg_destroy(&res);
        }
    }
    double seconds = (double)(s_now_us() - start) / 1e6;
    qsort(latency, (size_t)n, sizeof(int64_t), s_compare);
    int64_t *answered = latency + (n - done);
#define PCT(p)                                                                 \
    (done ? answered[(long)fmin((double)done - 1, floor((p) * (double)done))]  \
          : 0)
    printf("{\"count\":%ld,\"errors\":%ld,\"seconds\":%.4f,\"rps\":%.1f,"
           "\"p50_us\":%" PRId64 ",\"p90_us\":%" PRId64 ",\"p99_us\":%" PRId64
           ",\"max_us\":%" PRId64 "}\n",
           done, errors, seconds, (double)done / seconds, PCT(0.5), PCT(0.9),
           PCT(0.99), done ? answered[done - 1] : 0);
    fflush(stdout);
    free(sent_at);
    free(latency);
    free(body);
    zsock_destroy(&sock);
    return done == n ? 0 : 1;
}

int main(int argc, char *argv[])
{
    s_args_t args = {.frontend = "tcp://127.0.0.1:*",
                     .backend = "tcp://127.0.0.1:*",
                     .worker_mode = "llmq",
                     .model = "bench",
                     .capacity = 64,
                     .requests = 100000,
                     .window = 128,
                     .size = 1024,
                     .rate = 0};
    static const struct option options[] = {
        {"frontend", required_argument, NULL, 'f'},
        {"backend", required_argument, NULL, 'b'},
        {"connect", required_argument, NULL, 'c'},
        {"mode", required_argument, NULL, 'm'},
        {"model", required_argument, NULL, 'M'},
        {"tenant", required_argument, NULL, 'T'},
        {"capacity", required_argument, NULL, 'C'},
        {"requests", required_argument, NULL, 'n'},
        {"window", required_argument, NULL, 'w'},
        {"size", required_argument, NULL, 's'},
        {"rate", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    if (argc < 2) {
        fprintf(stderr, "usage: llmq-bench-broker proxy|worker|client "
                        "[options] (--help)\n");
        return 2;
    }
    args.mode = argv[1];
    /*  Where each option's value goes (by its short code): text or number. */
    const char **strs[128] = {
        ['f'] = &args.frontend,    ['b'] = &args.backend, ['c'] = &args.connect,
        ['m'] = &args.worker_mode, ['M'] = &args.model,   ['T'] = &args.tenant};
    long *nums[128] = {['C'] = &args.capacity,
                       ['n'] = &args.requests,
                       ['w'] = &args.window,
                       ['s'] = &args.size,
                       ['r'] = &args.rate};
    optind = 2;
    int opt;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt > 0 && opt < 128 && strs[opt])
            *strs[opt] = optarg;
        else if (opt > 0 && opt < 128 && nums[opt])
            *nums[opt] = atol(optarg);
        else if (opt == 'h') {
            printf("llmq-bench-broker proxy --frontend EP --backend EP\n"
                   "llmq-bench-broker worker --connect EP --mode raw|llmq "
                   "[--capacity N] [--model M]\n"
                   "llmq-bench-broker client --connect EP [--requests N] "
                   "[--window W] [--size BYTES] [--rate PER_S] [--model M]\n"
                   "                         [--tenant NAME]\n");
            return 0;
        } else
            return 2;
    }
    if (args.requests < 1 || args.window < 1 || args.capacity < 1)
        return 2;
    if (streq(args.mode, "proxy"))
        return s_proxy(&args);
    if (!args.connect) {
        fprintf(stderr, "--connect is required\n");
        return 2;
    }
    if (streq(args.mode, "worker"))
        return s_worker(&args);
    if (streq(args.mode, "client"))
        return s_client(&args);
    fprintf(stderr, "unknown mode %s\n", args.mode);
    return 2;
}
