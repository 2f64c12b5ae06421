/*  gw_keys.c - the API key file: one `KEY TENANT` per line, `#` comments.

    The file is checked at most once a second (from the gateway's tick) and
    read again when its mtime or size changed, so keys are added and revoked
    without a restart. A file that cannot be read keeps the keys we had (and
    says so once); an empty file accepts no key. Keys are never logged.
*/
#include "gw.h"

#include <sys/stat.h>

struct gw_keys_t {
    char *path;            /* the key file */
    zhashx_t *keys;        /* key -> tenant (strings, owned) */
    struct timespec mtime; /* of the version we read */
    off_t size;            /* of the version we read */
    bool warned;           /* unreadable file reported */
};

static void s_free_str(void **item)
{
    free(*item);
    *item = NULL;
}

/*  Parse the file into a fresh table, or NULL if it cannot be read. */
static zhashx_t *s_read(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    zhashx_t *keys = zhashx_new();
    zhashx_set_destructor(keys, s_free_str);
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *save = NULL;
        char *key = strtok_r(line, " \t\r\n", &save);
        char *tenant = key ? strtok_r(NULL, " \t\r\n", &save) : NULL;
        if (key)
            zhashx_update(keys, key, strdup(tenant ? tenant : "default"));
    }
    fclose(f);
    return keys;
}

gw_keys_t *gw_keys_new(const char *path)
{
    gw_keys_t *self = (gw_keys_t *)calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->path = strdup(path);
    struct stat st;
    if (stat(path, &st) != 0 || !(self->keys = s_read(path))) {
        gw_keys_destroy(&self);
        return NULL;
    }
    self->mtime = st.st_mtim;
    self->size = st.st_size;
    return self;
}

void gw_keys_destroy(gw_keys_t **self_p)
{
    if (self_p && *self_p) {
        gw_keys_t *self = *self_p;
        zhashx_destroy(&self->keys);
        free(self->path);
        free(self);
        *self_p = NULL;
    }
}

void gw_keys_reload(gw_keys_t *self)
{
    struct stat st;
    if (stat(self->path, &st) != 0) {
        if (!self->warned)
            llmq_log(NULL, LLMQ_LOG_WARN, "keys_unreadable",
                     LLMQ_LOG_STR("path", self->path),
                     LLMQ_LOG_STR("error", strerror(errno)),
                     LLMQ_LOG_STR("keeping", "the old keys"), LLMQ_LOG_END);
        self->warned = true;
        return;
    }
    if (st.st_mtim.tv_sec == self->mtime.tv_sec &&
        st.st_mtim.tv_nsec == self->mtime.tv_nsec && st.st_size == self->size)
        return;
    zhashx_t *keys = s_read(self->path);
    if (!keys)
        return;
    zhashx_destroy(&self->keys);
    self->keys = keys;
    self->mtime = st.st_mtim;
    self->size = st.st_size;
    self->warned = false;
    llmq_log(NULL, LLMQ_LOG_INFO, "keys_reloaded",
             LLMQ_LOG_STR("path", self->path),
             LLMQ_LOG_INT("keys", zhashx_size(keys)), LLMQ_LOG_END);
}

const char *gw_keys_tenant(gw_keys_t *self, const char *key)
{
    return (const char *)zhashx_lookup(self->keys, key);
}
