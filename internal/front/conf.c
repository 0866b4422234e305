/*
 * conf.c - the vendor module's path, read from the same configuration file
 * as libhaext's, in C.
 *
 * The front needs the path before any Go code has run (a host calls
 * C_GetFunctionList as soon as dlopen returns, while the Go runtime may
 * still be starting) and in a fork child, where Go cannot run. So this is a
 * small reader of its own, for the Chrystoki2 section only. It reads both
 * formats exactly as pkg/conf does (the brace format as pkg/conf's ToINI
 * converts it, INI as gopkg.in/ini.v1 reads it with pkg/conf's options:
 * case-insensitive names the way Go's strings.ToLower folds them, Unicode
 * white space, quotes, the last of repeated keys); front_test.go checks it
 * against pkg/conf on every input of a fuzz corpus. It is lenient where
 * pkg/conf fails a whole file (a malformed line elsewhere): such a line is
 * skipped, so a mistake in an HA section never takes the host's HSM away.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "front.h"

#define MAX_FILE (4 << 20) /* pkg/conf's limit */

struct str {
    const char *p;
    size_t n;
};

/* Length of the Unicode white space rune (Go's unicode.IsSpace) at the
 * start of s, or 0. */
static size_t space_prefix(const unsigned char *s, size_t n)
{
    if (n >= 1 && (s[0] == ' ' || (s[0] >= '\t' && s[0] <= '\r')))
        return 1;
    if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0))
        return 2;
    if (n >= 3) {
        if (s[0] == 0xE1 && s[1] == 0x9A && s[2] == 0x80) /* U+1680 */
            return 3;
        if (s[0] == 0xE2 && s[1] == 0x80 && (s[2] <= 0x8A || s[2] == 0xA8 || s[2] == 0xA9 || s[2] == 0xAF) &&
            s[2] >= 0x80) /* U+2000..200A, 2028, 2029, 202F */
            return 3;
        if (s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0x9F) /* U+205F */
            return 3;
        if (s[0] == 0xE3 && s[1] == 0x80 && s[2] == 0x80) /* U+3000 */
            return 3;
    }
    return 0;
}

/* Length of the white space rune at the end of s, or 0. A multi-byte
 * space is recognized only as a whole rune, as utf8.DecodeLastRune does. */
static size_t space_suffix(const unsigned char *s, size_t n)
{
    size_t k;
    if (n == 0)
        return 0;
    if (s[n - 1] < 0x80)
        return space_prefix(s + n - 1, 1);
    for (k = 2; k <= 3 && k <= n; k++) {
        if ((s[n - k] & 0xC0) == 0x80)
            continue; /* a continuation byte: look further back */
        return space_prefix(s + n - k, k) == k ? k : 0;
    }
    return 0;
}

static struct str trim_left(struct str s)
{
    size_t k;
    while ((k = space_prefix((const unsigned char *)s.p, s.n)) > 0) {
        s.p += k;
        s.n -= k;
    }
    return s;
}

static struct str trim(struct str s)
{
    size_t k;
    s = trim_left(s);
    while ((k = space_suffix((const unsigned char *)s.p, s.n)) > 0)
        s.n -= k;
    return s;
}

/* Whether s, folded by Go's strings.ToLower, equals the lower-case ASCII
 * word w. Only two non-ASCII runes fold to ASCII: U+0130 to 'i' and U+212A
 * (Kelvin) to 'k'. */
static int fold_eq(struct str s, const char *w)
{
    const unsigned char *p = (const unsigned char *)s.p;
    size_t i = 0;
    for (; *w != '\0'; w++) {
        char c;
        if (i >= s.n)
            return 0;
        if (p[i] < 0x80) {
            c = (char)p[i];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            i++;
        } else if (i + 1 < s.n && p[i] == 0xC4 && p[i + 1] == 0xB0) {
            c = 'i';
            i += 2;
        } else if (i + 2 < s.n && p[i] == 0xE2 && p[i + 1] == 0x84 && p[i + 2] == 0xAA) {
            c = 'k';
            i += 3;
        } else {
            return 0;
        }
        if (c != *w)
            return 0;
    }
    return i == s.n;
}

static int has_prefix(struct str s, const char *pre)
{
    size_t n = strlen(pre);
    return s.n >= n && memcmp(s.p, pre, n) == 0;
}

static int has_suffix(struct str s, const char *suf)
{
    size_t n = strlen(suf);
    return s.n >= n && memcmp(s.p + s.n - n, suf, n) == 0;
}

/* Index of the first (last) occurrence of needle in s, or -1. */
static long index_of(struct str s, const char *needle, int last)
{
    size_t n = strlen(needle), i;
    long found = -1;
    if (n > s.n)
        return -1;
    for (i = 0; i + n <= s.n; i++) {
        if (memcmp(s.p + i, needle, n) == 0) {
            found = (long)i;
            if (!last)
                return found;
        }
    }
    return found;
}

static struct str sub(struct str s, size_t from, size_t to)
{
    struct str r = {s.p + from, to - from};
    return r;
}

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

/* Records key = value of the Chrystoki2 section; pkg/conf trims values. */
static void store(struct haext_conf_keys *keys, struct str key, struct str val)
{
    val = trim(val);
    if (fold_eq(key, "libhaextvendor"))
        set_value(&keys->vendor, &keys->vendor_len, val.p, val.n);
    else if (fold_eq(key, "libunix64"))
        set_value(&keys->unix64, &keys->unix64_len, val.p, val.n);
    else if (fold_eq(key, "libunix"))
        set_value(&keys->unix32, &keys->unix32_len, val.p, val.n);
}

/* Splits the next line off *rest, without its '\n' (keep_nl: with it, as
 * go-ini's ReadBytes('\n') returns it). 0 at the end of the data. */
static int next_line(struct str *rest, struct str *line, int keep_nl)
{
    const char *nl;
    if (rest->n == 0)
        return 0;
    nl = memchr(rest->p, '\n', rest->n);
    if (nl == NULL) {
        *line = *rest;
        rest->p += rest->n;
        rest->n = 0;
        return 1;
    }
    line->p = rest->p;
    line->n = (size_t)(nl - rest->p) + (keep_nl ? 1 : 0);
    rest->n -= (size_t)(nl - rest->p) + 1;
    rest->p = nl + 1;
    return 1;
}

static int is_comment(struct str line)
{
    return has_prefix(line, "#") || has_prefix(line, ";") || has_prefix(line, "//");
}

/* pkg/conf's looksLikeINI: the first line that is neither blank nor a
 * comment starts with '['. */
static int looks_like_ini(struct str data)
{
    struct str line;
    while (next_line(&data, &line, 0)) {
        line = trim(line);
        if (line.n == 0 || is_comment(line))
            continue;
        return line.p[0] == '[';
    }
    return 0;
}

/* The brace format, as pkg/conf's ToINI reads it. */
static void parse_brace(struct str data, struct haext_conf_keys *keys)
{
    struct str line;
    int in_section = 0, chrystoki = 0;
    if (has_prefix(data, "\xEF\xBB\xBF"))
        data = sub(data, 3, data.n);
    while (next_line(&data, &line, 0)) {
        struct str key, val;
        long eq;
        if (has_suffix(line, "\r"))
            line.n--;
        line = trim(line);
        if (line.n == 0 || is_comment(line))
            continue;
        if (line.n == 1 && line.p[0] == '}') {
            in_section = chrystoki = 0;
            continue;
        }
        if (has_suffix(line, "{")) {
            struct str head = trim(sub(line, 0, line.n - 1));
            if (has_suffix(head, "=")) {
                in_section = 1;
                chrystoki = fold_eq(trim(sub(head, 0, head.n - 1)), "chrystoki2");
                continue;
            }
        }
        eq = index_of(line, "=", 0);
        if (eq < 0 || !in_section)
            continue;
        key = trim(sub(line, 0, (size_t)eq));
        val = trim(sub(line, (size_t)eq + 1, line.n));
        if (has_suffix(val, ";"))
            val = trim(sub(val, 0, val.n - 1));
        if (chrystoki && key.n > 0)
            store(keys, key, val);
    }
}

/* go-ini's hasSurroundedQuote. */
static int surrounded(struct str s, char q)
{
    size_t i;
    if (s.n < 2 || s.p[0] != q || s.p[s.n - 1] != q)
        return 0;
    for (i = 1; i + 1 < s.n; i++)
        if (s.p[i] == q)
            return 0;
    return 1;
}

/* go-ini's readValue (with IgnoreInlineComment and IgnoreContinuation),
 * including a quoted value that continues on the following lines. Returns
 * 0 and the value in *out (malloc'd), or -1 where go-ini fails. */
static int ini_value(struct str in, struct str *rest, char **out, size_t *outlen)
{
    struct str line = trim_left(in);
    const char *q = NULL;
    if (line.n == 0) {
        set_value(out, outlen, "", 0);
        return 0;
    }
    if (line.n > 3 && has_prefix(line, "\"\"\""))
        q = "\"\"\"";
    else if (line.p[0] == '`')
        q = "`";
    if (q != NULL) {
        size_t ql = strlen(q);
        struct str body = sub(line, ql, line.n);
        long pos = index_of(body, q, 1);
        char *acc;
        size_t len;
        if (pos >= 0) {
            set_value(out, outlen, body.p, (size_t)pos);
            return 0;
        }
        /* readMultilines: append whole lines until one holds the quote. */
        len = body.n;
        acc = malloc(len + 1);
        if (acc == NULL)
            return -1;
        memcpy(acc, body.p, len);
        for (;;) {
            struct str next = {"", 0};
            int eof = !next_line(rest, &next, 1) || next.n == 0 || next.p[next.n - 1] != '\n';
            long p2 = index_of(next, q, 1);
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
    line = trim(line);
    if (surrounded(line, '\'') || surrounded(line, '"'))
        line = sub(line, 1, line.n - 1);
    set_value(out, outlen, line.p, line.n);
    return 0;
}

/* go-ini's readKeyName: 0 and the key and the offset of the value, or -1. */
static int ini_key(struct str line, struct str *key, size_t *offset)
{
    const char *q = NULL;
    long eq;
    if (line.p[0] == '"')
        q = (line.n > 6 && has_prefix(line, "\"\"\"")) ? "\"\"\"" : "\"";
    else if (line.p[0] == '`')
        q = "`";
    if (q != NULL) {
        size_t ql = strlen(q);
        long pos = index_of(sub(line, ql, line.n), q, 0);
        if (pos < 0)
            return -1;
        pos += (long)ql;
        eq = index_of(sub(line, (size_t)pos + ql, line.n), "=", 0);
        if (eq < 0)
            return -1;
        *key = trim(sub(line, ql, (size_t)pos));
        *offset = (size_t)pos + (size_t)eq + ql + 1;
        return 0;
    }
    eq = index_of(line, "=", 0);
    if (eq <= 0)
        return -1;
    *key = trim(sub(line, 0, (size_t)eq));
    *offset = (size_t)eq + 1;
    return 0;
}

/* INI, as gopkg.in/ini.v1 reads it with pkg/conf's options. */
static void parse_ini(struct str data, struct haext_conf_keys *keys)
{
    struct str rest = data, line;
    int chrystoki = 0;
    if (has_prefix(rest, "\xFE\xFF") || has_prefix(rest, "\xFF\xFE"))
        rest = sub(rest, 2, rest.n);
    else if (has_prefix(rest, "\xEF\xBB\xBF"))
        rest = sub(rest, 3, rest.n);
    while (next_line(&rest, &line, 1)) {
        struct str key;
        size_t off;
        char *val = NULL;
        size_t vlen = 0;
        line = trim_left(line);
        if (line.n == 0 || line.p[0] == '#' || line.p[0] == ';')
            continue;
        if (line.p[0] == '[') {
            long close = index_of(line, "]", 1);
            if (close > 1)
                chrystoki = fold_eq(sub(line, 1, (size_t)close), "chrystoki2");
            continue;
        }
        if (ini_key(line, &key, &off) != 0)
            continue;
        if (ini_value(sub(line, off, line.n), &rest, &val, &vlen) != 0)
            continue;
        if (chrystoki && key.n > 0 && val != NULL)
            store(keys, key, (struct str){val, vlen});
        free(val);
    }
}

void haext_conf_parse(const char *data, size_t len, struct haext_conf_keys *keys)
{
    struct str d = {data, len};
    memset(keys, 0, sizeof *keys);
    if (has_prefix(d, "\xEF\xBB\xBF"))
        d = sub(d, 3, d.n);
    if (looks_like_ini(d))
        parse_ini(d, keys);
    else
        parse_brace(d, keys);
}

void haext_conf_keys_free(struct haext_conf_keys *keys)
{
    free(keys->vendor);
    free(keys->unix64);
    free(keys->unix32);
    memset(keys, 0, sizeof *keys);
}

static int regular_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int haext_conf_locate(char *path, size_t pathlen, char *err, size_t errlen)
{
    /* secure_getenv: a setuid host reads it as unset (capi.go, cGetenv). */
    const char *dir = secure_getenv("ChrystokiConfigurationPath");
    if (dir != NULL && dir[0] != '\0') {
        const char *sep = dir[strlen(dir) - 1] == '/' ? "" : "/";
        char win[4096];
        snprintf(path, pathlen, "%s%sChrystoki.conf", dir, sep);
        if (regular_file(path))
            return 0;
        snprintf(win, sizeof win, "%s%scrystoki.ini", dir, sep);
        if (regular_file(win)) {
            snprintf(path, pathlen, "%s", win);
            return 0;
        }
        snprintf(err, errlen, "ChrystokiConfigurationPath=%s: neither %s nor %s exists", dir, path, win);
        return -1;
    }
    snprintf(path, pathlen, "/etc/Chrystoki.conf");
    if (regular_file(path))
        return 0;
    snprintf(err, errlen,
             "/etc/Chrystoki.conf does not exist and ChrystokiConfigurationPath is not set (set it to the "
             "directory holding Chrystoki.conf or crystoki.ini)");
    return -1;
}

/* Reads a regular file of at most MAX_FILE bytes. */
static char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    struct stat st;
    char *buf;
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errlen, "configuration file: open %s: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_FILE) {
        snprintf(err, errlen, "configuration file %s is not a regular file of at most 4 MiB", path);
        close(fd);
        return NULL;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "configuration file %s: out of memory", path);
        close(fd);
        return NULL;
    }
    while (n < (size_t)st.st_size) {
        ssize_t k = read(fd, buf + n, (size_t)st.st_size - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    close(fd);
    buf[n] = '\0';
    *len = n;
    return buf;
}

int haext_conf_module(const char *path, char **module, const char **key, char *err, size_t errlen)
{
    struct haext_conf_keys keys;
    size_t len = 0, len0 = 0, *module_len = &len0;
    char *data = read_file(path, &len, err, errlen);
    if (data == NULL)
        return -1;
    haext_conf_parse(data, len, &keys);
    free(data);
    *module = NULL;
    if (keys.vendor != NULL && keys.vendor_len > 0) {
        *key = "Chrystoki2/LibHAExtVendor";
        *module = keys.vendor;
        *module_len = keys.vendor_len;
        keys.vendor = NULL;
    } else if (keys.unix64 != NULL && keys.unix64_len > 0) {
        *key = "Chrystoki2/LibUNIX64";
        *module = keys.unix64;
        *module_len = keys.unix64_len;
        keys.unix64 = NULL;
    } else if (keys.unix32 != NULL && keys.unix32_len > 0) {
        *key = "Chrystoki2/LibUNIX";
        *module = keys.unix32;
        *module_len = keys.unix32_len;
        keys.unix32 = NULL;
    }
    haext_conf_keys_free(&keys);
    if (*module != NULL && strlen(*module) != *module_len) {
        snprintf(err, errlen, "%s: %s: the value holds a NUL byte", path, *key);
        free(*module);
        *module = NULL;
        return -1;
    }
    if (*module == NULL) {
        snprintf(err, errlen, "%s: Chrystoki2: none of LibHAExtVendor, LibUNIX64 and LibUNIX is set: no PKCS#11 "
                 "module to load", path);
        return -1;
    }
    return 0;
}
