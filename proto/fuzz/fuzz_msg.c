/*  fuzz_msg.c - libFuzzer target for the protocol decoder.

    One input exercises everything that parses bytes from the network: the
    header decoder (with and without a payload frame), the payload
    walkers (msgpack -> JSON, validation, the batch item walk) and the
    typed payload readers of llmq_payload.h (result items, keys, status). The
   first byte picks the payload rule so both branches of the payload check run;
    the rest is the frame. Anything that decodes is encoded again and must
    decode to the same bytes; a results page or status map that decodes is
    encoded again, and that encoding must read back to the same bytes.

    Built with -DLLMQ_FUZZ=ON (clang, -fsanitize=fuzzer,address,undefined);
    without LLMQ_FUZZ_MAIN it is also compiled into fuzz_corpus_run, a plain
    main that replays the seed corpus in every normal build.
*/
#include "llmq_msg.h"
#include "llmq_payload.h"
#include "llmq_value.h"

#include <stdlib.h>
#include <string.h>

static int s_item(const char *custom_id, const void *body, size_t body_size,
                  void *arg)
{
    (void)custom_id;
    (void)body;
    *(size_t *)arg += body_size;
    return 0;
}

static void s_check_reencode(const llmq_msg_t *msg)
{
    zframe_t *frame = llmq_msg_encode(msg, NULL, 0);
    if (!frame)
        abort(); /* whatever decodes must encode */
    llmq_msg_t *back = llmq_msg_decode(zframe_data(frame), zframe_size(frame),
                                       llmq_msg_payload(msg) != NULL, NULL, 0);
    if (!back || llmq_msg_type(back) != llmq_msg_type(msg))
        abort();
    zframe_t *again = llmq_msg_encode(back, NULL, 0);
    if (!again || !zframe_eq(frame, again))
        abort();
    zframe_destroy(&again);
    zframe_destroy(&frame);
    llmq_msg_destroy(&back);
}

static int s_add_result(const llmq_result_item_t *item, void *arg)
{
    llmq_payload_add_result((llmq_payload_t *)arg, item);
    return 0;
}

/*  Results: decode, encode, decode again: the two encodings are equal. */
static void s_check_results(const uint8_t *data, size_t size)
{
    llmq_payload_t *once = llmq_payload_new();
    long n = llmq_payload_each_result(data, size, s_add_result, once, NULL, 0);
    if (n >= 0) {
        zframe_t *first = llmq_payload_frame(once);
        llmq_payload_t *twice = llmq_payload_new();
        if (!first ||
            llmq_payload_each_result(zframe_data(first), zframe_size(first),
                                     s_add_result, twice, NULL, 0) != n)
            abort();
        zframe_t *second = llmq_payload_frame(twice);
        if (!second || !zframe_eq(first, second))
            abort();
        zframe_destroy(&first);
        zframe_destroy(&second);
        llmq_payload_destroy(&twice);
    }
    llmq_payload_destroy(&once);
}

/*  Status: the same property. */
static void s_check_status(const uint8_t *data, size_t size)
{
    llmq_status_t *st = llmq_status_decode(data, size, NULL, 0);
    if (!st)
        return;
    zframe_t *first = llmq_status_encode(st);
    llmq_status_destroy(&st);
    st = first ? llmq_status_decode(zframe_data(first), zframe_size(first),
                                    NULL, 0)
               : NULL;
    zframe_t *second = st ? llmq_status_encode(st) : NULL;
    if (!second || !zframe_eq(first, second))
        abort();
    llmq_status_destroy(&st);
    zframe_destroy(&first);
    zframe_destroy(&second);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    bool has_payload = data[0] & 1;
    data++;
    size--;
    char err[256];
    llmq_msg_t *msg = llmq_msg_decode(data, size, has_payload, err, sizeof err);
    if (msg) {
        if (has_payload)
            llmq_msg_set_payload_mem(msg, "\xc0", 1);
        s_check_reencode(msg);
        llmq_msg_destroy(&msg);
    }
    cJSON *json = llmq_value_to_json(data, size, err, sizeof err);
    if ((json != NULL) != llmq_value_is_valid(data, size))
        abort(); /* "valid" must mean "converts" */
    if (json) {
        /* JSON back to msgpack must work for anything that converted */
        zframe_t *frame = llmq_value_from_json(json);
        if (!frame)
            abort();
        zframe_destroy(&frame);
        cJSON_Delete(json);
    }
    size_t body_bytes = 0;
    llmq_value_each_item(data, size, s_item, &body_bytes, err, sizeof err);
    s_check_results(data, size);
    llmq_payload_each_str(data, size, NULL, NULL, err, sizeof err);
    s_check_status(data, size);
    return 0;
}

#ifndef LLMQ_FUZZ_ENGINE
/*  Plain replay: fuzz_corpus_run PATH... runs each file (or each file in a
    directory) through the target, so the seed corpus never rots. */
#include <dirent.h>
#include <stdio.h>

static int s_run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz_corpus_run: cannot open %s\n", path);
        return -1;
    }
    uint8_t *buf = (uint8_t *)malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, 1 << 20, f) : 0;
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

static int s_run_dir(const char *path, int *files)
{
    DIR *dir = opendir(path);
    if (!dir) {
        if (s_run_file(path))
            return -1;
        (*files)++;
        return 0;
    }
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (entry->d_name[0] == '.')
            continue;
        char file[4096];
        snprintf(file, sizeof file, "%s/%s", path, entry->d_name);
        if (s_run_file(file)) {
            closedir(dir);
            return -1;
        }
        (*files)++;
    }
    closedir(dir);
    return 0;
}

int main(int argc, char **argv)
{
    int files = 0;
    for (int k = 1; k < argc; k++)
        if (s_run_dir(argv[k], &files))
            return 1;
    printf("fuzz_corpus_run: %d files, no failure\n", files);
    return files ? 0 : 1;
}
#endif
