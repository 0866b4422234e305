/*
 * conf_text.c - text as pkg/conf's Go code sees it, for the C reader of the
 * configuration (conf_parse.c): Unicode white space (Go's unicode.IsSpace),
 * trimming, case folding as strings.ToLower folds, lines, substrings.
 * Strings are byte ranges (struct front_str), never NUL-terminated.
 */
#include <string.h>

#include "conf.h"

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

struct front_str front_text_trim_left(struct front_str s)
{
    size_t k;
    while ((k = space_prefix((const unsigned char *)s.p, s.n)) > 0) {
        s.p += k;
        s.n -= k;
    }
    return s;
}

struct front_str front_text_trim(struct front_str s)
{
    size_t k;
    s = front_text_trim_left(s);
    while ((k = space_suffix((const unsigned char *)s.p, s.n)) > 0)
        s.n -= k;
    return s;
}

/* Only two non-ASCII runes fold to ASCII: U+0130 to 'i' and U+212A
 * (Kelvin) to 'k'. */
int front_text_fold_eq(struct front_str s, const char *w)
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

int front_text_has_prefix(struct front_str s, const char *pre)
{
    size_t n = strlen(pre);
    return s.n >= n && memcmp(s.p, pre, n) == 0;
}

int front_text_has_suffix(struct front_str s, const char *suf)
{
    size_t n = strlen(suf);
    return s.n >= n && memcmp(s.p + s.n - n, suf, n) == 0;
}

long front_text_index(struct front_str s, const char *needle, int last)
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

struct front_str front_text_sub(struct front_str s, size_t from, size_t to)
{
    struct front_str r = {s.p + from, to - from};
    return r;
}

int front_text_next_line(struct front_str *rest, struct front_str *line, int keep_nl)
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
