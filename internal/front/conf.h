/*
 * conf.h - the C reader of the configuration (conf_text.c, conf_parse.c,
 * conf.c): where the front finds the vendor module, before any Go code
 * runs and in a fork child.
 */
#ifndef HAEXT_FRONT_CONF_H
#define HAEXT_FRONT_CONF_H

#include <stddef.h>

/* --- conf_text.c: text as pkg/conf's Go code sees it ------------------ */

struct front_str {
    const char *p;
    size_t n;
};

struct front_str front_text_trim_left(struct front_str s);
struct front_str front_text_trim(struct front_str s);
/* Whether s, folded by Go's strings.ToLower, is the lower-case ASCII w. */
int front_text_fold_eq(struct front_str s, const char *w);
int front_text_has_prefix(struct front_str s, const char *pre);
int front_text_has_suffix(struct front_str s, const char *suf);
/* Index of the first (last) occurrence of needle in s, or -1. */
long front_text_index(struct front_str s, const char *needle, int last);
struct front_str front_text_sub(struct front_str s, size_t from, size_t to);
/* Splits the next line off *rest, without its '\n' (keep_nl: with it, as
 * go-ini's ReadBytes('\n') returns it). 0 at the end of the data. */
int front_text_next_line(struct front_str *rest, struct front_str *line, int keep_nl);

/* --- conf_parse.c, conf.c: the configuration ---------------------------- */

/* The module keys of the Chrystoki2 section, as pkg/conf reads them (last
 * occurrence wins, values trimmed). NULL: key absent. */
struct front_conf_keys {
    char *vendor; /* Chrystoki2/LibHAExtVendor: libhaext's own key, first */
    char *unix64; /* Chrystoki2/LibUNIX64 */
    char *unix32; /* Chrystoki2/LibUNIX */
    size_t vendor_len, unix64_len, unix32_len; /* a value may hold a NUL byte */
    /* Every key of the VirtualToken and HAConfiguration sections, in file
     * order (the HA slot's, haconf.c; the last of repeated keys wins). */
    struct front_conf_kv *ha;
    size_t nha;
};

/* A key of the HA sections: FRONT_CONF_VT (VirtualToken) or FRONT_CONF_HA
 * (HAConfiguration); key and value trimmed, NUL-terminated. */
enum { FRONT_CONF_VT = 1, FRONT_CONF_HA = 2 };
struct front_conf_kv {
    int section;
    char *key, *value;
};

/* Parses file contents (either format) into keys; free with
 * front_conf_keys_free. Lenient: a line pkg/conf would reject is skipped. */
void front_conf_parse(const char *data, size_t len, struct front_conf_keys *keys);
void front_conf_keys_free(struct front_conf_keys *keys);

/* Finds the configuration file like pkg/conf.Locate: a regular file
 * $ChrystokiConfigurationPath/Chrystoki.conf, else .../crystoki.ini, else
 * /etc/Chrystoki.conf. 0 and the path, or -1 and the reason in err. */
int front_conf_locate(char *path, size_t pathlen, char *err, size_t errlen);

/* Reads the file at path (regular, at most 4 MiB) and returns the module
 * to load: LibHAExtVendor, else LibUNIX64, else LibUNIX (the first that is
 * not empty) in *module (malloc'd) and which key in *key. 0, or -1 and the
 * reason in err. */
int front_conf_module(const char *path, char **module, const char **key, char *err, size_t errlen);

/* Reads and parses the file at path (as front_conf_module does) into keys:
 * 0, or -1 and the reason in err. */
int front_conf_read(const char *path, struct front_conf_keys *keys, char *err, size_t errlen);

#endif
