/*
 * bench.c - latency, fault, concurrency and resource benchmarks of
 * CA_GetCurrentHAState against a lab of real members (test/lab/lab.sh),
 * compared with the old way of asking (a session per member, one member
 * after another) and with the floor of one round trip.
 *
 *   bench [--json FILE] SCENARIO...
 *
 * Scenarios:
 *   sweep        legacy, libhaext and floor latency on the lab's group
 *   concurrency  calls per second and latency with 1, 8 and 64 callers
 *   resources    RSS and threads before and after 100k calls
 *   faults       a dead member (kill 1), a hung member (stop 2), resume
 *   fanout       libhaext against the C fan-out, alternating, hot and cold
 *   idle[=NAME]  context switches and CPU of an idle host, library loaded
 *   libonly=NAME libhaext latency alone, reported as scenario NAME
 *   libthread=NAME the same, called from a second thread, not main
 *
 * Runs under `lab.sh exec`. Environment: LIBHAEXT, HALAB_MODULE,
 * HALAB_SERIALS, HALAB_DIR; HALAB_LAB_SH (faults); BENCH_LATENCY_US (the
 * lab's injected latency, recorded in the output); BENCH_TIMEOUT_MS (the
 * lab's statusTimeout); BENCH_QUICK=1 shrinks every sample count (a smoke
 * run); BENCH_CONC_SECONDS (default 5), BENCH_RESOURCE_CALLS (default
 * 100000); BENCH_TRANSPORT (a label for the lab's transport, written into
 * every JSON line).
 *
 * Every measurement is printed as one line of text and, with --json, as one
 * JSON object per line appended to FILE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "../c/harness.h"

#define MAX CK_HA_MAX_MEMBERS

static struct host host;
static int nmembers;
static char serial_text[MAX][32];
static CK_ULONG serials[MAX];
static CK_SLOT_ID slots[MAX];
static long latency_us;
static double timeout_ms;
static int quick;
static FILE *json;
static const char *transport; /* BENCH_TRANSPORT: recorded with every measurement when set */

/* ------------------------------------------------------------------------
 * Samples
 * ---------------------------------------------------------------------- */

struct samples {
    double *v;
    size_t n, cap;
    int sorted;
};

static void add(struct samples *s, double ms)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1024;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v) {
            fprintf(stderr, "bench: out of memory\n");
            exit(2);
        }
    }
    s->v[s->n++] = ms;
    s->sorted = 0;
}

static void merge(struct samples *dst, const struct samples *src)
{
    size_t i;
    for (i = 0; i < src->n; i++) {
        add(dst, src->v[i]);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile. */
static double pct(struct samples *s, double p)
{
    size_t k;
    if (s->n == 0) {
        return NAN;
    }
    if (!s->sorted) {
        qsort(s->v, s->n, sizeof *s->v, cmp_double);
        s->sorted = 1;
    }
    k = (size_t)ceil(p / 100.0 * (double)s->n);
    if (k < 1) {
        k = 1;
    }
    if (k > s->n) {
        k = s->n;
    }
    return s->v[k - 1];
}

static double mean(const struct samples *s)
{
    double sum = 0;
    size_t i;
    for (i = 0; i < s->n; i++) {
        sum += s->v[i];
    }
    return s->n ? sum / (double)s->n : NAN;
}

static void release(struct samples *s)
{
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------
 * Output: a text line and a JSON object per measurement
 * ---------------------------------------------------------------------- */

/* jnum formats a number for JSON (null when not finite). */
static const char *jnum(char *buf, size_t size, double v)
{
    if (!isfinite(v)) {
        return "null";
    }
    snprintf(buf, size, "%.4f", v);
    return buf;
}

/* emit writes one measurement: common fields from s (may be NULL), then the
 * extra ones, given as a printf format of `,"key":value` pairs. */
static void emit(const char *scenario, int callers, struct samples *s, const char *extra, ...)
    __attribute__((format(printf, 4, 5)));
static void emit(const char *scenario, int callers, struct samples *s, const char *extra, ...)
{
    char more[2048] = "", a[32], b[32], c[32], d[32], e[32];
    va_list ap;
    if (extra) {
        va_start(ap, extra);
        vsnprintf(more, sizeof more, extra, ap);
        va_end(ap);
    }
    if (s) {
        printf("%-22s members=%-2d latency_us=%-5ld callers=%-2d n=%-6zu p50=%.3f p99=%.3f max=%.3f ms%s\n",
               scenario, nmembers, latency_us, callers, s->n, pct(s, 50), pct(s, 99), pct(s, 100), more);
    } else {
        printf("%-22s members=%-2d latency_us=%-5ld%s\n", scenario, nmembers, latency_us, more);
    }
    fflush(stdout);
    if (!json) {
        return;
    }
    fprintf(json, "{\"scenario\":\"%s\",\"members\":%d,\"latency_us\":%ld,\"timeout_ms\":%.0f", scenario, nmembers,
            latency_us, timeout_ms);
    if (transport) {
        fprintf(json, ",\"transport\":\"%s\"", transport);
    }
    if (s) {
        fprintf(json,
                ",\"callers\":%d,\"samples\":%zu,\"p50_ms\":%s,\"p99_ms\":%s,\"max_ms\":%s,\"min_ms\":%s,"
                "\"mean_ms\":%s",
                callers, s->n, jnum(a, sizeof a, pct(s, 50)), jnum(b, sizeof b, pct(s, 99)),
                jnum(c, sizeof c, pct(s, 100)), jnum(d, sizeof d, pct(s, 0)), jnum(e, sizeof e, mean(s)));
    }
    fprintf(json, "%s}\n", more);
    fflush(json);
}

/* ------------------------------------------------------------------------
 * The three ways of asking
 * ---------------------------------------------------------------------- */

/* ha_call: one CA_GetCurrentHAState on the group; returns the CK_RV. */
static CK_RV ha_call(CK_HA_STATUS *st)
{
    return host.get_state(slots[0], st);
}

/* all_ok: the report lists every member, in order, all CKR_OK. */
static int all_ok(CK_RV rv, const CK_HA_STATUS *st)
{
    int i;
    if (rv != CKR_OK || st->listSize != (CK_ULONG)nmembers) {
        return 0;
    }
    for (i = 0; i < nmembers; i++) {
        if (st->memberList[i].memberSerial != serials[i] || st->memberList[i].memberStatus != CKR_OK) {
            return 0;
        }
    }
    return 1;
}

static int op_libhaext(void *ctx)
{
    CK_HA_STATUS st;
    (void)ctx;
    return !all_ok(ha_call(&st), &st);
}

/* The old CA_GetHAState way: every member in turn gets a new read-only
 * session, one C_GetSessionInfo, and the session closed again. */
static int op_legacy(void *ctx)
{
    int i, bad = 0;
    (void)ctx;
    for (i = 0; i < nmembers; i++) {
        CK_SESSION_HANDLE s;
        CK_SESSION_INFO si;
        CK_RV rv = host.p11->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &s);
        if (rv == CKR_OK) {
            rv = host.p11->C_GetSessionInfo(s, &si);
            host.p11->C_CloseSession(s);
        }
        bad += rv != CKR_OK;
    }
    return bad;
}

/* The floor: one round trip over a session the bench holds. */
static int op_floor(void *ctx)
{
    CK_SESSION_INFO si;
    return host.p11->C_GetSessionInfo(*(CK_SESSION_HANDLE *)ctx, &si) != CKR_OK;
}

/* The ideal fan-out in C: one thread per member, each holding a session
 * on its member, all released at once for one C_GetSessionInfo; a round
 * ends when the last one answers. What any parallel implementation can at
 * best do on this machine. */
struct fanout {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned long gen;
    int remaining, stop;
    long errors;
    pthread_t t[MAX];
    CK_SESSION_HANDLE s[MAX];
    struct fan_arg {
        struct fanout *f;
        int i;
    } arg[MAX];
};

static void *fan_main(void *arg)
{
    struct fan_arg *a = arg;
    struct fanout *f = a->f;
    unsigned long seen = 0;
    for (;;) {
        CK_SESSION_INFO si;
        CK_RV rv;
        pthread_mutex_lock(&f->mu);
        while (f->gen == seen && !f->stop) {
            pthread_cond_wait(&f->go, &f->mu);
        }
        seen = f->gen;
        if (f->stop) {
            pthread_mutex_unlock(&f->mu);
            return NULL;
        }
        pthread_mutex_unlock(&f->mu);
        rv = host.p11->C_GetSessionInfo(f->s[a->i], &si);
        pthread_mutex_lock(&f->mu);
        f->errors += rv != CKR_OK;
        if (--f->remaining == 0) {
            pthread_cond_signal(&f->done);
        }
        pthread_mutex_unlock(&f->mu);
    }
}

static int op_fanout(void *ctx)
{
    struct fanout *f = ctx;
    long before;
    pthread_mutex_lock(&f->mu);
    before = f->errors;
    f->remaining = nmembers;
    f->gen++;
    pthread_cond_broadcast(&f->go);
    while (f->remaining > 0) {
        pthread_cond_wait(&f->done, &f->mu);
    }
    before = f->errors - before;
    pthread_mutex_unlock(&f->mu);
    return before != 0;
}

/* Opens a session per member and starts the fan-out's threads. */
static void fanout_start(struct fanout *f)
{
    int i;
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->go, NULL);
    pthread_cond_init(&f->done, NULL);
    for (i = 0; i < nmembers; i++) {
        if (host.p11->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &f->s[i]) != CKR_OK) {
            fprintf(stderr, "bench: cannot open a fan-out session on member %d\n", i);
            exit(2);
        }
        f->arg[i].f = f;
        f->arg[i].i = i;
        if (pthread_create(&f->t[i], NULL, fan_main, &f->arg[i]) != 0) {
            fprintf(stderr, "bench: pthread_create failed\n");
            exit(2);
        }
    }
}

/* Stops the fan-out's threads and closes its sessions. */
static void fanout_stop(struct fanout *f)
{
    int i;
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_cond_broadcast(&f->go);
    pthread_mutex_unlock(&f->mu);
    for (i = 0; i < nmembers; i++) {
        pthread_join(f->t[i], NULL);
        host.p11->C_CloseSession(f->s[i]);
    }
}

static double cpu_ms(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000.0 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000.0;
}

/* Context switches of all the process's threads, voluntary or not. */
static double ctx_switches(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_nvcsw + (double)ru.ru_nivcsw;
}

/* Busy CPU time of the whole machine (all processes, kernel included), in
 * ms, from /proc/stat. */
static double machine_busy_ms(void)
{
    unsigned long long v[10] = {0}, busy = 0;
    long hz = sysconf(_SC_CLK_TCK);
    FILE *f = fopen("/proc/stat", "r");
    int i, n;
    if (!f) {
        return NAN;
    }
    n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
               &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 4 || hz <= 0) {
        return NAN;
    }
    /* user nice system idle iowait irq softirq steal (guest time is
     * already in user). */
    for (i = 0; i < 8 && i < n; i++) {
        if (i != 3 && i != 4) {
            busy += v[i];
        }
    }
    return (double)busy * 1000.0 / (double)hz;
}

/* Where the CPU went during a measurement. */
struct cost {
    double proc_ms_per_call;    /* this process */
    double machine_ms_per_call; /* the whole machine: member servers too */
    double machine_cores;       /* the machine's busy CPUs on average */
    double ctxsw_per_call;      /* context switches of this process */
};

static const char *cost_json(char *buf, size_t size, const struct cost *c)
{
    char a[32], b[32], d[32], e[32];
    snprintf(buf, size,
             ",\"cpu_ms_per_call\":%s,\"machine_cpu_ms_per_call\":%s,\"machine_cores_busy\":%s,"
             "\"ctxsw_per_call\":%s",
             jnum(a, sizeof a, c->proc_ms_per_call), jnum(b, sizeof b, c->machine_ms_per_call),
             jnum(d, sizeof d, c->machine_cores), jnum(e, sizeof e, c->ctxsw_per_call));
    return buf;
}

struct plan {
    int warm, min_n, max_n;
    double budget_ms;
};

/* measure runs op warm times, then until max_n samples, or until budget_ms
 * has passed and at least min_n samples are taken. It returns the number of
 * failed calls, and the CPU time spent in *cost. */
static long measure(struct samples *s, int (*op)(void *), void *ctx, struct plan p, struct cost *cost)
{
    long errors = 0;
    int i;
    double t0, c0, m0, x0, el;
    for (i = 0; i < p.warm; i++) {
        op(ctx);
    }
    if (quick) {
        p.min_n = p.min_n / 10 + 1;
        p.max_n = p.max_n / 10 + 1;
        p.budget_ms /= 10;
    }
    t0 = now_ms();
    c0 = cpu_ms();
    m0 = machine_busy_ms();
    x0 = ctx_switches();
    while ((int)s->n < p.max_n && ((int)s->n < p.min_n || now_ms() - t0 < p.budget_ms)) {
        double a = now_ms();
        errors += op(ctx) != 0;
        add(s, now_ms() - a);
    }
    el = now_ms() - t0;
    if (cost) {
        double n = (double)s->n;
        cost->proc_ms_per_call = s->n ? (cpu_ms() - c0) / n : NAN;
        cost->machine_ms_per_call = s->n ? (machine_busy_ms() - m0) / n : NAN;
        cost->machine_cores = el > 0 ? cost->machine_ms_per_call * n / el : NAN;
        cost->ctxsw_per_call = s->n ? (ctx_switches() - x0) / n : NAN;
    }
    return errors;
}

/* ------------------------------------------------------------------------
 * Scenarios
 * ---------------------------------------------------------------------- */

static void scenario_sweep(void)
{
    struct samples lib = {0}, leg = {0}, flo = {0}, fan = {0};
    struct plan p_lib = {20, 200, 1000, 5000}, p_flo = {20, 200, 1000, 3000}, p_leg = {2, 30, 300, 6000};
    struct plan p_fan = {20, 200, 1000, 3000};
    struct cost k_lib, k_flo, k_leg, k_fan;
    struct fanout fo;
    CK_SESSION_HANDLE hs;
    CK_HA_STATUS st;
    double first, t0;
    long e_lib, e_leg, e_flo, e_fan;
    char a[32], b[32], c[32], d[32], e[32], f[32], g[32], ks[256];
    CK_RV rv;

    /* The first call loads the configuration, the module and opens the
     * monitor sessions. */
    t0 = now_ms();
    rv = ha_call(&st);
    first = now_ms() - t0;
    if (!all_ok(rv, &st)) {
        fprintf(stderr, "bench: first call: rv %s, not all members CKR_OK\n", status_name(rv));
    }
    e_lib = measure(&lib, op_libhaext, NULL, p_lib, &k_lib);
    emit("libhaext", 1, &lib, ",\"errors\":%ld,\"first_call_ms\":%.3f%s", e_lib, first,
         cost_json(ks, sizeof ks, &k_lib));

    if (host.p11->C_OpenSession(slots[0], CKF_SERIAL_SESSION, NULL, NULL, &hs) != CKR_OK) {
        fprintf(stderr, "bench: cannot open the floor session\n");
        exit(2);
    }
    e_flo = measure(&flo, op_floor, &hs, p_flo, &k_flo);
    host.p11->C_CloseSession(hs);
    emit("floor", 1, &flo, ",\"errors\":%ld%s", e_flo, cost_json(ks, sizeof ks, &k_flo));

    /* The ideal fan-out, in C threads. */
    fanout_start(&fo);
    e_fan = measure(&fan, op_fanout, &fo, p_fan, &k_fan);
    fanout_stop(&fo);
    emit("c_fanout", 1, &fan, ",\"errors\":%ld%s", e_fan, cost_json(ks, sizeof ks, &k_fan));

    e_leg = measure(&leg, op_legacy, NULL, p_leg, &k_leg);
    emit("legacy", 1, &leg, ",\"errors\":%ld%s", e_leg, cost_json(ks, sizeof ks, &k_leg));

    emit("summary", 1, NULL,
         ",\"legacy_p50_ms\":%s,\"legacy_p99_ms\":%s,\"libhaext_p50_ms\":%s,\"libhaext_p99_ms\":%s,"
         "\"floor_p50_ms\":%s,\"floor_p99_ms\":%s,\"c_fanout_p50_ms\":%s,\"legacy_over_libhaext\":%.2f,"
         "\"libhaext_over_floor\":%.3f,\"libhaext_over_c_fanout\":%.3f",
         jnum(a, sizeof a, pct(&leg, 50)), jnum(b, sizeof b, pct(&leg, 99)), jnum(c, sizeof c, pct(&lib, 50)),
         jnum(d, sizeof d, pct(&lib, 99)), jnum(e, sizeof e, pct(&flo, 50)), jnum(f, sizeof f, pct(&flo, 99)),
         jnum(g, sizeof g, pct(&fan, 50)), pct(&leg, 50) / pct(&lib, 50), pct(&lib, 50) / pct(&flo, 50),
         pct(&lib, 50) / pct(&fan, 50));
    release(&fan);
    release(&lib);
    release(&leg);
    release(&flo);
}

/* libhaext against the C fan-out in the same process, call by call
 * alternating so that both see the same machine: "hot" back to back, and
 * "cold" after 20 ms of idleness before each call, as a periodic monitor
 * calls. The ratio of the medians is the fan-out ratio of BENCHMARKS.md. */
static void scenario_fanout(void)
{
    static const struct {
        const char *name;
        long idle_us;
    } regimes[] = {{"hot", 0}, {"cold", 20000}};
    struct fanout fo;
    CK_HA_STATUS st;
    int r;

    if (!all_ok(ha_call(&st), &st)) {
        fprintf(stderr, "bench: fanout: first call not all CKR_OK\n");
    }
    fanout_start(&fo);
    for (r = 0; r < 2; r++) {
        struct samples lib = {0}, fan = {0};
        long e_lib = 0, e_fan = 0;
        int i, n = quick ? 40 : (regimes[r].idle_us ? 300 : 2000);
        char a[32], b[32];
        for (i = 0; i < 20; i++) { /* warm both */
            op_libhaext(NULL);
            op_fanout(&fo);
        }
        for (i = 0; i < n; i++) {
            double t0;
            if (regimes[r].idle_us) {
                sleep_ms(regimes[r].idle_us / 1000);
            }
            t0 = now_ms();
            e_lib += op_libhaext(NULL) != 0;
            add(&lib, now_ms() - t0);
            if (regimes[r].idle_us) {
                sleep_ms(regimes[r].idle_us / 1000);
            }
            t0 = now_ms();
            e_fan += op_fanout(&fo) != 0;
            add(&fan, now_ms() - t0);
        }
        emit("fanout", 1, &lib, ",\"regime\":\"%s\",\"errors\":%ld,\"c_fanout_p50_ms\":%s,\"c_fanout_p99_ms\":%s,"
             "\"c_fanout_errors\":%ld,\"libhaext_over_c_fanout\":%.3f",
             regimes[r].name, e_lib, jnum(a, sizeof a, pct(&fan, 50)), jnum(b, sizeof b, pct(&fan, 99)), e_fan,
             pct(&lib, 50) / pct(&fan, 50));
        release(&lib);
        release(&fan);
    }
    fanout_stop(&fo);
}

/* A host with the library loaded and every member healthy, doing nothing:
 * the process's context switches and CPU time over BENCH_IDLE_SECONDS
 * (default 20), after one status call and a settling time of statusTimeout
 * + 1 s. The settling time is reported on its own: it holds the status
 * call's tail, whose waits (the module's load, members' first resolution)
 * are bounded by statusTimeout; the Go runtime may wake once at such a
 * wait's deadline even though the wait ended long before. */
static void scenario_idle(const char *name)
{
    const char *env = getenv("BENCH_IDLE_SECONDS");
    double seconds = env ? atof(env) : (quick ? 5 : 20), x0, c0, t0, el, settle_s, s0;
    CK_HA_STATUS st;
    if (!all_ok(ha_call(&st), &st)) {
        fprintf(stderr, "bench: idle: first call not all CKR_OK\n");
    }
    s0 = ctx_switches();
    t0 = now_ms();
    sleep_ms((long)timeout_ms + 1000);
    settle_s = (now_ms() - t0) / 1000.0;
    x0 = ctx_switches();
    c0 = cpu_ms();
    t0 = now_ms();
    sleep_ms((long)(seconds * 1000));
    el = (now_ms() - t0) / 1000.0;
    emit(name, 0, NULL,
         ",\"seconds\":%.1f,\"ctxsw_per_s\":%.2f,\"cpu_ms_per_s\":%.3f,\"threads\":%d"
         ",\"settle_seconds\":%.1f,\"settle_ctxsw\":%.0f",
         el, (ctx_switches() - x0 - 1) / el, (cpu_ms() - c0) / el, thread_count(), settle_s, x0 - s0 - 1);
}

/* libhaext alone, under the name given (a diagnostic variant of the sweep,
 * e.g. with another GOMAXPROCS). */
static void *libonly_main(void *arg)
{
    const char *name = arg;
    struct samples lib = {0};
    struct plan p = {20, 200, 1000, 5000};
    struct cost k;
    char ks[256];
    long errors = measure(&lib, op_libhaext, NULL, p, &k);
    emit(name, 1, &lib, ",\"errors\":%ld%s", errors, cost_json(ks, sizeof ks, &k));
    release(&lib);
    return NULL;
}

/* The same from a thread the bench creates rather than the main thread. */
static void scenario_libonly_thread(const char *name)
{
    pthread_t t;
    if (pthread_create(&t, NULL, libonly_main, (void *)name) != 0) {
        fprintf(stderr, "bench: pthread_create failed\n");
        exit(2);
    }
    pthread_join(t, NULL);
}

/* Concurrency: N threads call for a fixed time. */
struct caller {
    pthread_t t;
    struct samples s;
    long errors;
};

static pthread_barrier_t start_line;
static volatile double stop_at;

static void *caller_main(void *arg)
{
    struct caller *c = arg;
    pthread_barrier_wait(&start_line);
    while (now_ms() < stop_at) {
        CK_HA_STATUS st;
        double a = now_ms();
        CK_RV rv = ha_call(&st);
        add(&c->s, now_ms() - a);
        c->errors += !all_ok(rv, &st);
    }
    return NULL;
}

static void scenario_concurrency(void)
{
    static const int counts[] = {1, 8, 64};
    const char *env = getenv("BENCH_CONC_SECONDS");
    double seconds = env ? atof(env) : 5.0;
    CK_HA_STATUS st;
    size_t k;
    int i;

    if (quick) {
        seconds /= 5;
    }
    for (i = 0; i < 50; i++) {
        ha_call(&st);
    }
    for (k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        int n = counts[k];
        struct caller *cs = calloc((size_t)n, sizeof *cs);
        struct samples all = {0};
        long errors = 0;
        double t0, elapsed, c0, cpu, m0, mcpu, x0, xs;
        int threads_peak;
        if (!cs) {
            exit(2);
        }
        pthread_barrier_init(&start_line, NULL, (unsigned)n + 1);
        for (i = 0; i < n; i++) {
            if (pthread_create(&cs[i].t, NULL, caller_main, &cs[i]) != 0) {
                fprintf(stderr, "bench: pthread_create failed\n");
                exit(2);
            }
        }
        t0 = now_ms();
        stop_at = t0 + seconds * 1000.0;
        c0 = cpu_ms();
        m0 = machine_busy_ms();
        x0 = ctx_switches();
        pthread_barrier_wait(&start_line);
        sleep_ms((long)(seconds * 500));
        threads_peak = thread_count();
        for (i = 0; i < n; i++) {
            pthread_join(cs[i].t, NULL);
            merge(&all, &cs[i].s);
            errors += cs[i].errors;
            release(&cs[i].s);
        }
        elapsed = now_ms() - t0;
        cpu = cpu_ms() - c0;
        mcpu = machine_busy_ms() - m0;
        xs = ctx_switches() - x0;
        pthread_barrier_destroy(&start_line);
        emit("concurrency", n, &all,
             ",\"errors\":%ld,\"seconds\":%.2f,\"calls_per_s\":%.1f,\"cpu_ms_per_call\":%.4f,"
             "\"cpu_util\":%.2f,\"machine_cores_busy\":%.2f,\"ctxsw_per_call\":%.2f,\"threads\":%d",
             errors, elapsed / 1000.0, (double)all.n / (elapsed / 1000.0), all.n ? cpu / (double)all.n : 0.0,
             cpu / elapsed, mcpu / elapsed, all.n ? xs / (double)all.n : 0.0, threads_peak - n);
        release(&all);
        free(cs);
    }
}

static void scenario_resources(void)
{
    const char *env = getenv("BENCH_RESOURCE_CALLS");
    long calls = env ? atol(env) : 100000, i, errors = 0;
    long rss_load, rss_before, rss_after, rss_peak = 0;
    int thr_load, thr_before, thr_after, thr_peak = 0;
    double t0, elapsed;
    CK_HA_STATUS st;

    if (quick) {
        calls /= 10;
    }
    rss_load = rss_kib();
    thr_load = thread_count();
    for (i = 0; i < 1000; i++) {
        CK_RV rv = ha_call(&st);
        errors += !all_ok(rv, &st);
    }
    rss_before = rss_kib();
    thr_before = thread_count();
    t0 = now_ms();
    for (i = 0; i < calls; i++) {
        CK_RV rv = ha_call(&st);
        errors += !all_ok(rv, &st);
        if (i % 10000 == 0) {
            long r = rss_kib();
            int t = thread_count();
            rss_peak = r > rss_peak ? r : rss_peak;
            thr_peak = t > thr_peak ? t : thr_peak;
        }
    }
    elapsed = now_ms() - t0;
    rss_after = rss_kib();
    thr_after = thread_count();
    emit("resources", 1, NULL,
         ",\"calls\":%ld,\"errors\":%ld,\"seconds\":%.2f,\"mean_ms\":%.4f,\"rss_at_load_kib\":%ld,"
         "\"rss_before_kib\":%ld,\"rss_after_kib\":%ld,\"rss_peak_kib\":%ld,\"threads_at_load\":%d,"
         "\"threads_before\":%d,\"threads_after\":%d,\"threads_peak\":%d",
         calls, errors, elapsed / 1000.0, elapsed / (double)calls, rss_load, rss_before, rss_after, rss_peak,
         thr_load, thr_before, thr_after, thr_peak);
}

/* lab applies a fault to a member; the bench cannot go on without it. */
static void lab(const char *action, int idx)
{
    if (lab_run(action, idx) != 0) {
        fprintf(stderr, "bench: lab.sh %s %d failed\n", action, idx);
        exit(2);
    }
}

/* expect: the report lists every member; member `which` has status want,
 * all the others CKR_OK except member `also_down` (-1: none), which must
 * not be CKR_OK. */
static int expect(CK_RV rv, const CK_HA_STATUS *st, int which, CK_RV want, int also_down)
{
    int i;
    if (rv != CKR_OK || st->listSize != (CK_ULONG)nmembers) {
        return 0;
    }
    for (i = 0; i < nmembers; i++) {
        CK_RV m = st->memberList[i].memberStatus;
        if (i == which ? m != want : i == also_down ? m == CKR_OK : m != CKR_OK) {
            return 0;
        }
    }
    return 1;
}

static void scenario_faults(void)
{
    struct samples dead = {0}, during = {0}, healthy = {0};
    CK_HA_STATUS st;
    double t0, ms = 0, first_hung, back;
    long bad = 0;
    int i, n = quick ? 20 : 200, first_dead_ok, first_hung_ok, detect_index = -1;
    CK_RV rv;

    if (nmembers < 3) {
        fprintf(stderr, "bench: faults need at least 3 members\n");
        exit(2);
    }
    for (i = 0; i < 20; i++) {
        ha_call(&st);
    }
    for (i = 0; i < n; i++) {
        t0 = now_ms();
        rv = ha_call(&st);
        add(&healthy, now_ms() - t0);
        bad += !all_ok(rv, &st);
    }
    emit("fault_healthy", 1, &healthy, ",\"errors\":%ld", bad);

    /* A dead member: its p11-kit-remote is SIGKILLed (lab.sh waits until
     * it is gone). */
    lab("kill", 1);
    bad = 0;
    first_dead_ok = 0;
    for (i = 0; i < n; i++) {
        t0 = now_ms();
        rv = ha_call(&st);
        add(&dead, now_ms() - t0);
        if (expect(rv, &st, 1, CKR_HA_SOCKET_DOWN, -1)) {
            if (detect_index < 0) {
                detect_index = i;
            }
            first_dead_ok |= i == 0;
        } else {
            bad++;
        }
    }
    emit("fault_dead", 1, &dead,
         ",\"expect\":\"CKR_HA_SOCKET_DOWN\",\"errors\":%ld,\"first_call_ms\":%.4f,\"first_call_ok\":%s,"
         "\"detected_at_call\":%d",
         bad, dead.v[0], first_dead_ok ? "true" : "false", detect_index);

    /* A hung member: SIGSTOP. The first call waits statusTimeout. */
    lab("stop", 2);
    t0 = now_ms();
    rv = ha_call(&st);
    first_hung = now_ms() - t0;
    first_hung_ok = expect(rv, &st, 2, CKR_HA_TIMEOUT, 1);
    emit("fault_hung_first", 1, NULL,
         ",\"expect\":\"CKR_HA_TIMEOUT\",\"first_call_ms\":%.3f,\"first_call_ok\":%s,\"over_timeout_ms\":%.3f",
         first_hung, first_hung_ok ? "true" : "false", first_hung - timeout_ms);

    /* The stuck call is now older than statusTimeout. */
    bad = 0;
    for (i = 0; i < n; i++) {
        t0 = now_ms();
        rv = ha_call(&st);
        add(&during, now_ms() - t0);
        bad += !expect(rv, &st, 2, CKR_HA_TIMEOUT, 1);
    }
    emit("fault_hung_during", 1, &during, ",\"expect\":\"CKR_HA_TIMEOUT\",\"errors\":%ld", bad);

    /* Resume: the member answers again. */
    lab("cont", 2);
    t0 = now_ms();
    back = -1;
    while (now_ms() - t0 < timeout_ms + 5000) {
        double a = now_ms();
        rv = ha_call(&st);
        ms = now_ms() - a;
        if (rv == CKR_OK && st.listSize == (CK_ULONG)nmembers && st.memberList[2].memberStatus == CKR_OK) {
            back = now_ms() - t0;
            break;
        }
        sleep_ms(1);
    }
    emit("fault_resume", 1, NULL, ",\"resume_ms\":%.3f,\"last_call_ms\":%.3f,\"ok\":%s", back, ms,
         back >= 0 ? "true" : "false");
    release(&dead);
    release(&during);
    release(&healthy);
}

int main(int argc, char **argv)
{
    const char *env;
    int i, argi = 1;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 2 && strcmp(argv[1], "--json") == 0) {
        json = fopen(argv[2], "a");
        if (!json) {
            fprintf(stderr, "bench: %s: %s\n", argv[2], strerror(errno));
            return 2;
        }
        argi = 3;
    }
    if (argi >= argc) {
        fprintf(stderr, "usage: %s [--json FILE] sweep|fanout|idle|concurrency|resources|faults|libonly=NAME|libthread=NAME...\n",
                argv[0]);
        return 2;
    }
    nmembers = lab_members(serial_text, serials, MAX);
    latency_us = (env = getenv("BENCH_LATENCY_US")) ? atol(env) : 0;
    timeout_ms = (env = getenv("BENCH_TIMEOUT_MS")) ? atof(env) : 3000;
    quick = (env = getenv("BENCH_QUICK")) && strcmp(env, "1") == 0;
    transport = getenv("BENCH_TRANSPORT");

    host_load(&host, need_env("HALAB_MODULE"), need_env("LIBHAEXT"));
    /* A benchmark, not a test of signal handling: a SIGPIPE from a write to
     * a dead member must not end the run. */
    signal(SIGPIPE, SIG_IGN);
    lab_slots(&host, serial_text, nmembers, slots);
    for (i = argi; i < argc; i++) {
        if (strcmp(argv[i], "sweep") == 0) {
            scenario_sweep();
        } else if (strncmp(argv[i], "libonly=", 8) == 0) {
            libonly_main(argv[i] + 8);
        } else if (strncmp(argv[i], "libthread=", 10) == 0) {
            scenario_libonly_thread(argv[i] + 10);
        } else if (strcmp(argv[i], "concurrency") == 0) {
            scenario_concurrency();
        } else if (strcmp(argv[i], "resources") == 0) {
            scenario_resources();
        } else if (strcmp(argv[i], "faults") == 0) {
            scenario_faults();
        } else if (strcmp(argv[i], "fanout") == 0) {
            scenario_fanout();
        } else if (strcmp(argv[i], "idle") == 0) {
            scenario_idle("idle");
        } else if (strncmp(argv[i], "idle=", 5) == 0) {
            scenario_idle(argv[i] + 5);
        } else {
            fprintf(stderr, "bench: unknown scenario %s\n", argv[i]);
            return 2;
        }
    }
    if (json) {
        fclose(json);
    }
    return 0;
}
