/*  llmq_curve.c - CURVE keys for llmq peers (proto/PROTOCOL.md 1.1).

    Thin on CZMQ's zcert: what it adds is checking. zcert_load happily
    returns a certificate with an all-zero secret key when only the public
    file exists, and a typo in a broker key would otherwise show up only as
    a silent handshake failure; here both fail at start-up with a reason.
*/
#include "llmq_curve.h"

#include <sys/stat.h>

//  Z85 of 32 zero bytes: what zcert reports when a file has no secret key.
static const char s_zero_key[] = "0000000000000000000000000000000000000000";

static bool s_is_z85_key(const char *text)
{
    if (!text || strlen(text) != LLMQ_CURVE_KEY_LEN)
        return false;
    uint8_t bin[32];
    return zmq_z85_decode(bin, text) != NULL;
}

zcert_t *llmq_curve_cert_load(const char *path, char *err, size_t size)
{
    if (!path || !*path) {
        snprintf(err, size, "no certificate path given");
        return NULL;
    }
    //  zcert_load reads PATH_secret first, then PATH itself.
    char secret[1024];
    snprintf(secret, sizeof(secret), "%s_secret", path);
    zcert_t *cert = zsys_file_exists(path) || zsys_file_exists(secret)
                        ? zcert_load(path)
                        : NULL;
    if (!cert) {
        snprintf(err, size, "cannot read a CURVE certificate from '%s'", path);
        return NULL;
    }
    if (streq(zcert_secret_txt(cert), s_zero_key)) {
        snprintf(err, size,
                 "'%s' has no secret key (give NAME_secret, the file "
                 "`llmq keygen NAME` wrote)",
                 path);
        zcert_destroy(&cert);
        return NULL;
    }
    return cert;
}

int llmq_curve_key_resolve(const char *key_or_path, char *out, char *err,
                           size_t size)
{
    if (!key_or_path || !*key_or_path) {
        snprintf(err, size, "no broker key given");
        return -1;
    }
    if (s_is_z85_key(key_or_path) && !zsys_file_exists(key_or_path)) {
        memcpy(out, key_or_path, LLMQ_CURVE_KEY_LEN + 1);
        return 0;
    }
    zconfig_t *root = zconfig_load(key_or_path);
    const char *text =
        root ? zconfig_get(root, "/curve/public-key", NULL) : NULL;
    int rc = -1;
    if (s_is_z85_key(text)) {
        memcpy(out, text, LLMQ_CURVE_KEY_LEN + 1);
        rc = 0;
    } else
        snprintf(err, size,
                 "broker key '%.200s' is neither a 40-character Z85 key nor "
                 "a certificate file with a public key",
                 key_or_path);
    zconfig_destroy(&root);
    return rc;
}

void llmq_curve_client_apply(zsock_t *sock, zcert_t *cert,
                             const char *server_key)
{
    zcert_apply(cert, sock);
    zsock_set_curve_serverkey(sock, server_key);
}

int llmq_curve_wanted(const char *cert_path, const char *broker_key, char *err,
                      size_t size)
{
    bool cert = cert_path && *cert_path;
    bool key = broker_key && *broker_key;
    if (cert && key)
        return 1;
    if (!cert && !key)
        return 0;
    snprintf(err, size,
             cert ? "--curve-cert needs --broker-key (or "
                    "LLMQ_BROKER_KEY)"
                  : "--broker-key needs --curve-cert (or "
                    "LLMQ_CURVE_CERT)");
    return -1;
}

int llmq_curve_keygen(const char *name, char *err, size_t size)
{
    char secret[1024];
    if (!name || !*name || strlen(name) > sizeof(secret) - 8) {
        snprintf(err, size, "keygen wants a file name");
        return -1;
    }
    snprintf(secret, sizeof(secret), "%s_secret", name);
    if (zsys_file_exists(name) || zsys_file_exists(secret)) {
        snprintf(err, size, "'%s' or '%s' exists already; not overwriting",
                 name, secret);
        return -1;
    }
    zcert_t *cert = zcert_new();
    if (!cert) {
        snprintf(err, size, "cannot make a keypair (no CURVE in libzmq?)");
        return -1;
    }
    const char *base = strrchr(name, '/');
    zcert_set_meta(cert, "name", "%s", base ? base + 1 : name);
    zcert_set_meta(cert, "created-by", "llmq keygen");
    mode_t old = umask(077);
    int rc = zcert_save_secret(cert, secret);
    umask(old);
    if (rc == 0)
        rc = zcert_save_public(cert, name);
    if (rc != 0)
        snprintf(err, size, "cannot write '%s': %s", name, strerror(errno));
    else
        chmod(secret, 0600);
    zcert_destroy(&cert);
    return rc == 0 ? 0 : -1;
}

//  --------------------------------------------------------------------------
//  Self test

#include "llmq_check.h"
#define CHECK(x) LLMQ_CHECK_OR(x, return 1)

int llmq_curve_test(bool verbose)
{
    char dir[] = "/tmp/llmq-curve-test-XXXXXX";
    CHECK(mkdtemp(dir));
    char name[128], secret[160], err[256], key[LLMQ_CURVE_KEY_LEN + 1];
    snprintf(name, sizeof(name), "%s/alice", dir);
    snprintf(secret, sizeof(secret), "%s_secret", name);
    CHECK(llmq_curve_keygen(name, err, sizeof(err)) == 0);
    CHECK(llmq_curve_keygen(name, err, sizeof(err)) == -1);
    struct stat st;
    CHECK(stat(secret, &st) == 0 && (st.st_mode & 077) == 0);
    zcert_t *a = llmq_curve_cert_load(name, err, sizeof(err));
    zcert_t *b = llmq_curve_cert_load(secret, err, sizeof(err));
    CHECK(a && b && streq(zcert_public_txt(a), zcert_public_txt(b)));
    CHECK(llmq_curve_key_resolve(name, key, err, sizeof(err)) == 0);
    CHECK(streq(key, zcert_public_txt(a)));
    CHECK(llmq_curve_key_resolve(zcert_public_txt(b), key, err, sizeof(err)) ==
          0);
    CHECK(llmq_curve_key_resolve("short", key, err, sizeof(err)) == -1);
    //  The public file alone holds no secret: refused with a reason.
    unlink(secret);
    CHECK(llmq_curve_cert_load(name, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "no secret key"));
    CHECK(llmq_curve_cert_load("/nonexistent/x", err, sizeof(err)) == NULL);
    CHECK(llmq_curve_wanted(NULL, "", err, sizeof(err)) == 0);
    CHECK(llmq_curve_wanted("a", "b", err, sizeof(err)) == 1);
    CHECK(llmq_curve_wanted("a", NULL, err, sizeof(err)) == -1);
    zcert_destroy(&a);
    zcert_destroy(&b);
    unlink(name);
    rmdir(dir);
    if (verbose)
        printf("llmq_curve: OK\n");
    return 0;
}
