/*
 * vendor.c - loading the vendor module behind the front.
 *
 * On the host's first C_GetFunctionList or C_Initialize (or the engine's
 * first haext_front_host), the front reads the configuration file
 * (conf.c), takes Chrystoki2/LibHAExtVendor, else LibUNIX64, else LibUNIX,
 * and dlopens that module with RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND, so
 * that the vendor's own symbols bind to the vendor even though the front
 * exports C_* functions of the same names. It refuses to load itself (the
 * configuration names the front, or a copy of a libhaext library): that
 * would recurse, or start a second Go runtime. A failed load is retried on
 * the next call, so a host that fixes the file can try again.
 *
 * The front's list is 2.40 whatever version the vendor's reports. The
 * vendor's C_GetInterface, if it has one, is asked for "PKCS 11" 3.0 on the
 * host's first C_GetInterface or C_GetInterfaceList (iface.c), not at load:
 * a host that uses C_GetFunctionList only makes the vendor see no call of
 * the front's.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "state.h"

CK_FUNCTION_LIST_PTR _Atomic haext_vendor;
CK_FUNCTION_LIST haext_vcopy __attribute__((aligned(64)));

CK_RV haext_no_function(void)
{
    return atomic_load_explicit(&haext_vendor, memory_order_acquire) == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED
                                                                              : CKR_FUNCTION_NOT_SUPPORTED;
}

static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;
static char load_error[1024];
static char vendor_path[PATH_MAX];
static struct haext_host host;
/* The vendor's C_GetInterface (NULL: a 2.x module), set at load; whether
 * haext_vendor_interfaces has asked it. */
static CK_C_GetInterface vendor_get_interface;
static atomic_int interfaces_asked;

/* Whether path (when it names a file) is the file this code was loaded
 * from. */
static int is_self(const char *path)
{
    Dl_info info;
    struct stat a, b;
    if (strchr(path, '/') == NULL)
        return 0; /* searched for by dlopen: checked after loading */
    if (dladdr((void *)haext_front_load, &info) == 0 || info.dli_fname == NULL)
        return 0;
    return stat(path, &a) == 0 && stat(info.dli_fname, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* Writes line to standard error without raising SIGPIPE on the host. */
static void to_stderr(const char *line)
{
    sigset_t pipe, old, pend;
    int was;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &old);
    sigpending(&pend);
    was = sigismember(&pend, SIGPIPE);
    if (write(STDERR_FILENO, line, strlen(line)) < 0) {
        /* nowhere to report it */
    }
    sigpending(&pend);
    if (!was && sigismember(&pend, SIGPIPE)) {
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Records why the vendor cannot be loaded, in syslog and on standard error
 * (the host's HSM is unusable: say so where a person looks), once per
 * distinct reason. */
static int fail(const char *fmt, const char *a, const char *b, const char *c)
{
    static char last[sizeof load_error];
    char msg[sizeof load_error - 32], line[sizeof load_error + 1];
    snprintf(msg, sizeof msg, fmt, a, b, c);
    snprintf(load_error, sizeof load_error, "libhaext-pkcs11: %s", msg);
    if (strcmp(last, load_error) != 0) {
        snprintf(last, sizeof last, "%s", load_error);
        syslog(LOG_USER | LOG_ERR, "%s", load_error);
        snprintf(line, sizeof line, "%s\n", load_error);
        to_stderr(line);
    }
    return -1;
}

/* Whether a and b are in the same loaded object. */
static int same_object(void *a, void *b)
{
    Dl_info ia, ib;
    return dladdr(a, &ia) != 0 && dladdr(b, &ib) != 0 && ia.dli_fbase == ib.dli_fbase;
}

static int load_locked(void)
{
    char conf[PATH_MAX], err[768];
    char *module = NULL;
    const char *key = "";
    void *h;
    CK_C_GetFunctionList gfl;
    CK_FUNCTION_LIST_PTR list = NULL;
    CK_RV rv;
    int rc = -1;

    haext_state_init();
    if (haext_conf_locate(conf, sizeof conf, err, sizeof err) != 0)
        return fail("%s%s%s", err, "", "");
    if (haext_conf_module(conf, &module, &key, err, sizeof err) != 0)
        return fail("%s%s%s", err, "", "");
    snprintf(vendor_path, sizeof vendor_path, "%s", module);
    if (is_self(module)) {
        fail("%s names %s, which is libhaext-pkcs11 itself: %s", key, module,
             "set Chrystoki2/LibHAExtVendor to the vendor's module (it takes precedence over LibUNIX64)");
        goto out;
    }
    h = dlopen(module, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (h == NULL) {
        const char *why = dlerror();
        fail("cannot load the vendor module %s (%s): %s", module, key, why != NULL ? why : "dlopen failed");
        goto out;
    }
    gfl = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
    if (gfl == NULL) {
        fail("the vendor module %s (%s) has no C_GetFunctionList%s", module, key, "");
        goto out;
    }
    if (gfl == C_GetFunctionList || dlsym(h, "CA_GetHAExtLastError") != NULL) {
        fail("%s names %s, which is a libhaext library, not the vendor's module: %s", key, module,
             "set Chrystoki2/LibHAExtVendor to the vendor's module (it takes precedence over LibUNIX64)");
        goto out;
    }
    rv = gfl(&list);
    if (rv != CKR_OK || list == NULL) {
        char code[32];
        snprintf(code, sizeof code, "0x%08lx", (unsigned long)rv);
        fail("C_GetFunctionList of the vendor module %s (%s) failed: %s", module, key, code);
        goto out;
    }
    if (list == &haext_front_list) {
        fail("%s names %s, which leads back to libhaext-pkcs11 itself%s", key, module, "");
        goto out;
    }
    vendor_get_interface = (CK_C_GetInterface)dlsym(h, "C_GetInterface");
    if (vendor_get_interface != NULL && !same_object((void *)vendor_get_interface, (void *)gfl))
        vendor_get_interface = NULL; /* a library the vendor links (libp11-kit), not the vendor's own */
    host.list = list;
    memcpy(&haext_vcopy, list, sizeof haext_vcopy);
    atomic_thread_fence(memory_order_release);
    load_error[0] = '\0';
    atomic_store_explicit(&haext_vendor, list, memory_order_release);
    rc = 0;
out:
    free(module);
    return rc;
}

/* Set while this thread loads the vendor: a vendor that loads the front
 * again (p11-kit-proxy with the front among its modules) gets an error,
 * not a deadlock. */
static __thread int loading __attribute__((tls_model("initial-exec")));

int haext_front_load(void)
{
    int rc;
    if (atomic_load_explicit(&haext_vendor, memory_order_acquire) != NULL)
        return 0;
    if (loading)
        return fail("the vendor module loads libhaext-pkcs11 again while it is being loaded (%s%s%s)",
                    "a p11-kit module file names libhaext-pkcs11 and Chrystoki.conf names p11-kit-proxy?", "", "");
    pthread_mutex_lock(&load_mu);
    loading = 1;
    rc = atomic_load_explicit(&haext_vendor, memory_order_acquire) != NULL ? 0 : load_locked();
    loading = 0;
    pthread_mutex_unlock(&load_mu);
    return rc;
}

/* Asks the vendor's C_GetInterface for "PKCS 11" 3.0, and for 2.40's flags. */
static void ask_interfaces(void)
{
    CK_VERSION v30 = {3, 0}, v240 = {2, 40};
    CK_INTERFACE_PTR i = NULL;
    CK_FUNCTION_LIST_3_0 *list3 = NULL;
    CK_FLAGS flags3 = 0, flags240 = 0;
    if (vendor_get_interface == NULL) {
        haext_iface_set(NULL, 0, 0);
        return;
    }
    if (vendor_get_interface((CK_UTF8CHAR_PTR) "PKCS 11", &v30, &i, 0) == CKR_OK && i != NULL &&
        i->pFunctionList != NULL && ((CK_VERSION *)i->pFunctionList)->major >= 3 &&
        i->pFunctionList != (void *)&haext_front_list3) {
        list3 = i->pFunctionList;
        flags3 = i->flags;
    }
    i = NULL;
    if (vendor_get_interface((CK_UTF8CHAR_PTR) "PKCS 11", &v240, &i, 0) == CKR_OK && i != NULL)
        flags240 = i->flags;
    haext_iface_set(list3, flags3, flags240);
}

void haext_vendor_interfaces(void)
{
    if (atomic_load_explicit(&interfaces_asked, memory_order_acquire))
        return;
    if (loading)
        return; /* the vendor's C_GetInterface asks the front: 2.40 only */
    pthread_mutex_lock(&load_mu);
    loading = 1;
    if (!atomic_load_explicit(&interfaces_asked, memory_order_relaxed)) {
        ask_interfaces();
        atomic_store_explicit(&interfaces_asked, 1, memory_order_release);
    }
    loading = 0;
    pthread_mutex_unlock(&load_mu);
}

const struct haext_host *haext_front_host(void)
{
    if (haext_front_load() != 0)
        return NULL;
    haext_state_hooks(&host);
    return &host;
}

const char *haext_front_error(void)
{
    return load_error;
}

const char *haext_front_vendor_path(void)
{
    return vendor_path;
}

/* The fork child: the load mutex may have been held by a thread that does
 * not exist there. */
void haext_vendor_atfork_child(void)
{
    pthread_mutex_init(&load_mu, NULL);
}
