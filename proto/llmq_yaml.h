/*  llmq_yaml.h - YAML files through libcyaml, with "file:line: reason"
    errors: the one loader of the broker's routes file and the worker's
    config file.

    libcyaml reports errors through its log callback, with a backtrace that
    names a line; these functions collect that log and print one clean line.
    For an unknown key libcyaml names its mapping's line, so the key's own
    line is looked up in the text. */
#ifndef LLMQ_YAML_H_INCLUDED
#define LLMQ_YAML_H_INCLUDED

#include <cyaml/cyaml.h>
#include <stdbool.h>
#include <stddef.h>

//  Loads text (len bytes) against schema into *data (NULL for an empty
//  document). Returns 0, or -1 with "name:line: reason" (or "name: reason"
//  when no line is known) in err.
int llmq_yaml_load(const char *name, const char *text, size_t len,
                   const cyaml_schema_value_t *schema, void **data, char *err,
                   size_t errlen);

//  As llmq_yaml_load, the text read from path (at most max_bytes); a file
//  that cannot be opened is "path: cannot open: why".
int llmq_yaml_load_file(const char *path, size_t max_bytes,
                        const cyaml_schema_value_t *schema, void **data,
                        char *err, size_t errlen);

//  Frees what llmq_yaml_load gave (data may be NULL).
void llmq_yaml_free(const cyaml_schema_value_t *schema, void *data);

//  Selftest: 0 when every check passed.
int llmq_yaml_test(bool verbose);

#endif
