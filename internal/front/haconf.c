/*
 * haconf.c - the HA slot's configuration: the groups of the VirtualToken
 * section (read as pkg/conf reads them: VirtualTokenNNLabel, SN, Members,
 * NN two digits) with libhaext's own keys beside Luna's, and the
 * HAConfiguration keys. Luna's keys keep Luna's meaning; libhaext's are
 * prefixed LibHAExt, so none collides with a Luna key of other meaning:
 *
 *   VirtualTokenNNLibHAExtStandby   = serial, ...  members that get work only
 *                                     when no active member is usable
 *   VirtualTokenNNLibHAExtOpTimeout = ms           (0, the default: off)
 *   HAConfiguration/HAOnly          = 1            the vendor's slots hidden
 *   HAConfiguration/LibHAExtHASlot  = 0            no HA slot (default 1)
 *   HAConfiguration/LibHAExtKeepPIN = 0            the PIN is not kept
 *   HAConfiguration/LibHAExtReplayLimit = bytes    multi-part data kept for a
 *                                     replay (default 1048576)
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ha.h"

typedef struct front_str str;

int front_haconf_serial(const unsigned char *text, size_t n, unsigned long long *out)
{
    str s = front_text_trim((str){(const char *)text, n});
    int decimal = 1;
    unsigned long long v = 0;
    if (s.n == 0)
        return -1;
    for (size_t i = 0; i < s.n; i++) {
        char c = s.p[i];
        if ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))
            decimal = 0;
        else if (c < '0' || c > '9')
            return -1;
    }
    for (size_t i = 0; i < s.n; i++) {
        char c = s.p[i];
        unsigned d = c <= '9' ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
        unsigned base = decimal ? 10 : 16;
        if (v > (~0ULL - d) / base)
            return -1;
        v = v * base + d;
    }
    *out = v;
    return 0;
}

/* The value of key (folded) in section sec: the last occurrence, or NULL. */
static const char *value_of(const struct front_conf_keys *k, int sec, const char *key)
{
    const char *v = NULL;
    for (size_t i = 0; i < k->nha; i++)
        if (k->ha[i].section == sec && front_text_fold_eq((str){k->ha[i].key, strlen(k->ha[i].key)}, key))
            v = k->ha[i].value;
    return v;
}

static long number(const char *v, long dflt, long min, long max)
{
    char *end;
    long n;
    if (v == NULL || *v == '\0')
        return dflt;
    n = strtol(v, &end, 10);
    if (*end != '\0' || n < min || n > max)
        return dflt;
    return n;
}

/* Splits a comma-separated list of serials; calls fn for each. */
static void serials(const char *list, void (*fn)(struct front_ha_group *, unsigned long long, struct front_str),
                    struct front_ha_group *g)
{
    const char *p = list;
    while (p != NULL && *p != '\0') {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
        unsigned long long v;
        if (front_haconf_serial((const unsigned char *)p, n, &v) == 0)
            fn(g, v, front_text_trim((str){p, n}));
        p = comma != NULL ? comma + 1 : NULL;
    }
}

static void add_member(struct front_ha_group *g, unsigned long long v, str text)
{
    for (int i = 0; i < g->nmembers; i++)
        if (g->member[i] == v)
            return;
    if (g->nmembers >= FRONT_HA_MAX_MEMBERS)
        return;
    snprintf(g->text[g->nmembers], sizeof g->text[0], "%.*s", (int)text.n, text.p);
    g->member[g->nmembers++] = v;
}

static void mark_standby(struct front_ha_group *g, unsigned long long v, str text)
{
    (void)text;
    for (int i = 0; i < g->nmembers; i++)
        if (g->member[i] == v)
            g->standby[i] = 1;
}

/* Group nn, when its SN and Members are set (a group pkg/conf reports). */
static int build_group(const struct front_conf_keys *k, int nn, struct front_ha_group *g)
{
    char key[64];
    const char *label, *sn, *members;
    snprintf(key, sizeof key, "virtualtoken%02dsn", nn);
    sn = value_of(k, FRONT_CONF_VT, key);
    snprintf(key, sizeof key, "virtualtoken%02dmembers", nn);
    members = value_of(k, FRONT_CONF_VT, key);
    if (sn == NULL || members == NULL)
        return 0;
    memset(g, 0, sizeof *g);
    g->nn = nn;
    snprintf(key, sizeof key, "virtualtoken%02dlabel", nn);
    label = value_of(k, FRONT_CONF_VT, key);
    snprintf(g->label, sizeof g->label, "%s", label != NULL ? label : "");
    snprintf(g->serial, sizeof g->serial, "%s", sn);
    serials(members, add_member, g);
    snprintf(key, sizeof key, "virtualtoken%02dlibhaextstandby", nn);
    serials(value_of(k, FRONT_CONF_VT, key), mark_standby, g);
    snprintf(key, sizeof key, "virtualtoken%02dlibhaextoptimeout", nn);
    g->op_timeout_ms = number(value_of(k, FRONT_CONF_VT, key), 0, 0, 3600000);
    return g->nmembers > 0;
}

/* haLogPath when haLogStatus is enabled (the engine's keys). */
static void log_dir(const struct front_conf_keys *k, struct front_ha_conf *c)
{
    const char *status = value_of(k, FRONT_CONF_HA, "halogstatus"), *path = value_of(k, FRONT_CONF_HA, "halogpath");
    if (status != NULL && path != NULL && front_text_fold_eq((str){status, strlen(status)}, "enabled"))
        snprintf(c->log_dir, sizeof c->log_dir, "%s", path);
}

void front_haconf_build(const struct front_conf_keys *k, struct front_ha_conf *c)
{
    memset(c, 0, sizeof *c);
    c->ha_only = number(value_of(k, FRONT_CONF_HA, "haonly"), 0, 0, 1);
    c->keep_pin = (int)number(value_of(k, FRONT_CONF_HA, "libhaextkeeppin"), 1, 0, 1);
    c->replay = (unsigned long)number(value_of(k, FRONT_CONF_HA, "libhaextreplaylimit"), 1L << 20, 0, 1L << 30);
    for (int nn = 0; nn < FRONT_HA_MAX_GROUPS; nn++)
        if (build_group(k, nn, &c->group[c->ngroups]))
            c->ngroups++;
    log_dir(k, c);
    c->enabled = c->ngroups > 0 && number(value_of(k, FRONT_CONF_HA, "libhaexthaslot"), 1, 0, 1) == 1;
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
static struct front_ha_conf *conf; /* made on first use: no BSS for a host that never needs it */
static atomic_int loaded;

static void load(void)
{
    char path[4096], err[512];
    struct front_conf_keys keys;
    if (front_conf_locate(path, sizeof path, err, sizeof err) != 0)
        return;
    if (front_conf_read(path, &keys, err, sizeof err) != 0)
        return;
    if ((conf = malloc(sizeof *conf)) != NULL)
        front_haconf_build(&keys, conf);
    front_conf_keys_free(&keys);
    atomic_store(&loaded, 1);
}

int front_haconf_loaded(void)
{
    return atomic_load(&loaded);
}

const struct front_ha_conf *front_haconf(void)
{
    pthread_once(&once, load);
    return conf != NULL && conf->enabled ? conf : NULL;
}
