/*
 * conf_parse.c - the module keys of the Chrystoki2 section, and the keys of
 * the VirtualToken and HAConfiguration sections (the HA slot's), read from
 * the configuration file's contents in C.
 *
 * The front needs the vendor's path before any Go code has run (a host
 * calls C_GetFunctionList as soon as dlopen returns) and in a fork child,
 * where Go cannot run. So this is a small reader of its own, for the
 * Chrystoki2 section only. It reads both formats exactly as pkg/conf does
 * (the brace format as pkg/conf's ToINI converts it, INI as gopkg.in/ini.v1
 * reads it with pkg/conf's options: case-insensitive names the way Go's
 * strings.ToLower folds them, Unicode white space, quotes, the last of
 * repeated keys); front_test.go checks it against pkg/conf on every input
 * of a fuzz corpus. It is lenient where pkg/conf fails a whole file (a
 * malformed line elsewhere): such a line is skipped, so a mistake in an HA
 * section never takes the host's HSM away.
 */
#include <stdlib.h>
#include <string.h>

#include "conf.h"

typedef struct front_str str;

static void set_value(char **dst, size_t *dlen, const char *p, size_t n)
{
    char *v = malloc(n + 1);
    if (v == NULL)
        return;
    memcpy(v, p, n);
    v[n] = '\0';
    free(*dst);
    *dst = v;
    if (dlen != NULL)
        *dlen = n;
}

/* Which section a header names: 0 (none of the front's), FRONT_CONF_VT,
 * FRONT_CONF_HA, or SEC_CHRYSTOKI. */
#define SEC_CHRYSTOKI 3
static int section_of(str name)
{
    if (front_text_fold_eq(name, "chrystoki2"))
        return SEC_CHRYSTOKI;
    if (front_text_fold_eq(name, "virtualtoken"))
        return FRONT_CONF_VT;
    if (front_text_fold_eq(name, "haconfiguration"))
        return FRONT_CONF_HA;
    return 0;
}

static char *dup_str(str s)
{
    char *d = malloc(s.n + 1);
    if (d != NULL) {
        memcpy(d, s.p, s.n);
        d[s.n] = '\0';
    }
    return d;
}

/* Records key = value of an HA section. */
static void store_ha(struct front_conf_keys *keys, int sec, str key, str val)
{
    struct front_conf_kv *grown = realloc(keys->ha, (keys->nha + 1) * sizeof *grown);
    char *k, *v;
    if (grown == NULL)
        return;
    keys->ha = grown;
    k = dup_str(front_text_trim(key));
    v = dup_str(front_text_trim(val));
    if (k == NULL || v == NULL) {
        free(k);
        free(v);
        return;
    }
    keys->ha[keys->nha++] = (struct front_conf_kv){sec, k, v};
}

/* Records key = value of section sec; pkg/conf trims values. */
static void store(struct front_conf_keys *keys, int sec, str key, str val)
{
    val = front_text_trim(val);
    if (sec == FRONT_CONF_VT || sec == FRONT_CONF_HA) {
        store_ha(keys, sec, key, val);
        return;
    }
    if (sec != SEC_CHRYSTOKI)
        return;
    if (front_text_fold_eq(key, "libhaextvendor"))
        set_value(&keys->vendor, &keys->vendor_len, val.p, val.n);
    else if (front_text_fold_eq(key, "libunix64"))
        set_value(&keys->unix64, &keys->unix64_len, val.p, val.n);
    else if (front_text_fold_eq(key, "libunix"))
        set_value(&keys->unix32, &keys->unix32_len, val.p, val.n);
}

static int is_comment(str line)
{
    return front_text_has_prefix(line, "#") || front_text_has_prefix(line, ";") || front_text_has_prefix(line, "//");
}

/* pkg/conf's looksLikeINI: the first line that is neither blank nor a
 * comment starts with '['. */
static int looks_like_ini(str data)
{
    str line;
    while (front_text_next_line(&data, &line, 0)) {
        line = front_text_trim(line);
        if (line.n == 0 || is_comment(line))
            continue;
        return line.p[0] == '[';
    }
    return 0;
}

/* The brace format, as pkg/conf's ToINI reads it. */
static void parse_brace(str data, struct front_conf_keys *keys)
{
    str line;
    int in_section = 0, sec = 0;
    if (front_text_has_prefix(data, "\xEF\xBB\xBF"))
        data = front_text_sub(data, 3, data.n);
    while (front_text_next_line(&data, &line, 0)) {
        str key, val;
        long eq;
        if (front_text_has_suffix(line, "\r"))
            line.n--;
        line = front_text_trim(line);
        if (line.n == 0 || is_comment(line))
            continue;
        if (line.n == 1 && line.p[0] == '}') {
            in_section = sec = 0;
            continue;
        }
        if (front_text_has_suffix(line, "{")) {
            str head = front_text_trim(front_text_sub(line, 0, line.n - 1));
            if (front_text_has_suffix(head, "=")) {
                in_section = 1;
                sec = section_of(front_text_trim(front_text_sub(head, 0, head.n - 1)));
                continue;
            }
        }
        eq = front_text_index(line, "=", 0);
        if (eq < 0 || !in_section)
            continue;
        key = front_text_trim(front_text_sub(line, 0, (size_t)eq));
        val = front_text_trim(front_text_sub(line, (size_t)eq + 1, line.n));
        if (front_text_has_suffix(val, ";"))
            val = front_text_trim(front_text_sub(val, 0, val.n - 1));
        if (sec != 0 && key.n > 0)
            store(keys, sec, key, val);
    }
}

/* go-ini's hasSurroundedQuote. */
static int surrounded(str s, char q)
{
    size_t i;
    if (s.n < 2 || s.p[0] != q || s.p[s.n - 1] != q)
        return 0;
    for (i = 1; i + 1 < s.n; i++)
        if (s.p[i] == q)
            return 0;
    return 1;
}

/* go-ini's readMultilines: a value quoted with q that starts with body
 * (its first line, after the quote) and goes on over whole lines of *rest
 * until one holds the quote. 0 and the value in *out, or -1 where go-ini
 * fails (no closing quote). */
static int ini_multiline(str body, const char *q, str *rest, char **out, size_t *outlen)
{
    size_t len = body.n;
    char *acc = malloc(len + 1);
    if (acc == NULL)
        return -1;
    memcpy(acc, body.p, len);
    for (;;) {
        str next = {"", 0};
        int eof = !front_text_next_line(rest, &next, 1) || next.n == 0 || next.p[next.n - 1] != '\n';
        long p2 = front_text_index(next, q, 1);
        size_t take = p2 >= 0 ? (size_t)p2 : next.n;
        char *grown = realloc(acc, len + take + 1);
        if (grown == NULL) {
            free(acc);
            return -1;
        }
        acc = grown;
        memcpy(acc + len, next.p, take);
        len += take;
        if (p2 >= 0)
            break;
        if (eof) {
            free(acc);
            return -1;
        }
    }
    free(*out);
    acc[len] = '\0';
    *out = acc;
    *outlen = len;
    return 0;
}

/* go-ini's readValue (with IgnoreInlineComment and IgnoreContinuation),
 * including a quoted value that continues on the following lines. Returns
 * 0 and the value in *out (malloc'd), or -1 where go-ini fails. */
static int ini_value(str in, str *rest, char **out, size_t *outlen)
{
    str line = front_text_trim_left(in);
    const char *q = NULL;
    if (line.n == 0) {
        set_value(out, outlen, "", 0);
        return 0;
    }
    if (line.n > 3 && front_text_has_prefix(line, "\"\"\""))
        q = "\"\"\"";
    else if (line.p[0] == '`')
        q = "`";
    if (q != NULL) {
        str body = front_text_sub(line, strlen(q), line.n);
        long pos = front_text_index(body, q, 1);
        if (pos < 0)
            return ini_multiline(body, q, rest, out, outlen);
        set_value(out, outlen, body.p, (size_t)pos);
        return 0;
    }
    line = front_text_trim(line);
    if (surrounded(line, '\'') || surrounded(line, '"'))
        line = front_text_sub(line, 1, line.n - 1);
    set_value(out, outlen, line.p, line.n);
    return 0;
}

/* go-ini's readKeyName: 0 and the key and the offset of the value, or -1. */
static int ini_key(str line, str *key, size_t *offset)
{
    const char *q = NULL;
    long eq;
    if (line.p[0] == '"')
        q = (line.n > 6 && front_text_has_prefix(line, "\"\"\"")) ? "\"\"\"" : "\"";
    else if (line.p[0] == '`')
        q = "`";
    if (q != NULL) {
        size_t ql = strlen(q);
        long pos = front_text_index(front_text_sub(line, ql, line.n), q, 0);
        if (pos < 0)
            return -1;
        pos += (long)ql;
        eq = front_text_index(front_text_sub(line, (size_t)pos + ql, line.n), "=", 0);
        if (eq < 0)
            return -1;
        *key = front_text_trim(front_text_sub(line, ql, (size_t)pos));
        *offset = (size_t)pos + (size_t)eq + ql + 1;
        return 0;
    }
    eq = front_text_index(line, "=", 0);
    if (eq <= 0)
        return -1;
    *key = front_text_trim(front_text_sub(line, 0, (size_t)eq));
    *offset = (size_t)eq + 1;
    return 0;
}

/* INI, as gopkg.in/ini.v1 reads it with pkg/conf's options. */
static void parse_ini(str data, struct front_conf_keys *keys)
{
    str rest = data, line;
    int sec = 0;
    if (front_text_has_prefix(rest, "\xFE\xFF") || front_text_has_prefix(rest, "\xFF\xFE"))
        rest = front_text_sub(rest, 2, rest.n);
    else if (front_text_has_prefix(rest, "\xEF\xBB\xBF"))
        rest = front_text_sub(rest, 3, rest.n);
    while (front_text_next_line(&rest, &line, 1)) {
        str key;
        size_t off;
        char *val = NULL;
        size_t vlen = 0;
        line = front_text_trim_left(line);
        if (line.n == 0 || line.p[0] == '#' || line.p[0] == ';')
            continue;
        if (line.p[0] == '[') {
            long close = front_text_index(line, "]", 1);
            if (close > 1)
                sec = section_of(front_text_sub(line, 1, (size_t)close));
            continue;
        }
        if (ini_key(line, &key, &off) != 0)
            continue;
        if (ini_value(front_text_sub(line, off, line.n), &rest, &val, &vlen) != 0)
            continue;
        if (sec != 0 && key.n > 0 && val != NULL)
            store(keys, sec, key, (str){val, vlen});
        free(val);
    }
}

void front_conf_parse(const char *data, size_t len, struct front_conf_keys *keys)
{
    str d = {data, len};
    memset(keys, 0, sizeof *keys);
    if (front_text_has_prefix(d, "\xEF\xBB\xBF"))
        d = front_text_sub(d, 3, d.n);
    if (looks_like_ini(d))
        parse_ini(d, keys);
    else
        parse_brace(d, keys);
}

void front_conf_keys_free(struct front_conf_keys *keys)
{
    free(keys->vendor);
    free(keys->unix64);
    free(keys->unix32);
    for (size_t i = 0; i < keys->nha; i++) {
        free(keys->ha[i].key);
        free(keys->ha[i].value);
    }
    free(keys->ha);
    memset(keys, 0, sizeof *keys);
}
