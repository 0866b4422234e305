/*
 * vendor.c - loading the vendor module behind the front.
 *
 * On the host's first C_GetFunctionList, C_Initialize or C_GetInterface
 * (or libhaext.so's first CA_* call), the front reads the configuration
 * file (conf.c), takes Chrystoki2/LibHAExtVendor, else LibUNIX64, else
 * LibUNIX, and dlopens that module with RTLD_NOW | RTLD_LOCAL |
 * RTLD_DEEPBIND, so that the vendor's own symbols bind to the vendor even
 * though the front exports C_* functions of the same names. It refuses to
 * load itself (the configuration names the front, or a copy of a libhaext
 * library): that would recurse, or start a second Go runtime. A failed
 * load is retried on the next call, so a host that fixes the file can try
 * again.
 *
 * The front's list is 2.40 whatever version the vendor's reports. The
 * vendor's C_GetInterface, if it has one, is asked for "PKCS 11" 3.0 on the
 * host's first C_GetInterface or C_GetInterfaceList (iface.c), not at load:
 * a host that uses C_GetFunctionList only makes the vendor see no call of
 * the front's. This file calls nothing of the front's but conf.c: what is
 * the front's own it tells by the object an address lies in.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "call.h"
#include "front.h"

CK_FUNCTION_LIST_PTR _Atomic front_vendor_list;
CK_FUNCTION_LIST front_vendor_copy __attribute__((aligned(64)));
CK_FUNCTION_LIST_3_0 front_vendor_copy3 __attribute__((aligned(64)));

CK_RV front_vendor_missing(void)
{
    return atomic_load_explicit(&front_vendor_list, memory_order_acquire) == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED
                                                                                   : CKR_FUNCTION_NOT_SUPPORTED;
}

static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;
static char load_error[1024];
static char vendor_path[PATH_MAX];
/* The vendor's C_GetInterface (NULL: a 2.x module), set at load; its
 * answer, and whether it was asked. */
static CK_C_GetInterface vendor_get_interface;
static struct front_vendor_ifaces ifaces;
static atomic_int ifaces_asked;
/* Set while this thread loads the vendor or asks its interfaces: a vendor
 * that loads the front again (p11-kit-proxy with the front among its
 * modules) gets an error, not a deadlock. */
static __thread int loading __attribute__((tls_model("initial-exec")));

/* Whether a and b are in the same loaded object. */
static int same_object(const void *a, const void *b)
{
    Dl_info ia, ib;
    return dladdr(a, &ia) != 0 && dladdr(b, &ib) != 0 && ia.dli_fbase == ib.dli_fbase;
}

/* Whether p lies in the front's own object (its lists, its functions). */
static int front_own(const void *p)
{
    return same_object(p, (const void *)front_vendor_load);
}

/* Whether path (when it names a file) is the file this code was loaded
 * from. */
static int is_self(const char *path)
{
    Dl_info info;
    struct stat a, b;
    if (strchr(path, '/') == NULL)
        return 0; /* searched for by dlopen: checked after loading */
    if (dladdr((void *)front_vendor_load, &info) == 0 || info.dli_fname == NULL)
        return 0;
    return stat(path, &a) == 0 && stat(info.dli_fname, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* Writes line to standard error without raising SIGPIPE on the host. */
static void to_stderr(const char *line)
{
    struct hx_guard g;
    hx_guard_begin(&g);
    if (write(STDERR_FILENO, line, strlen(line)) < 0) {
        /* nowhere to report it */
    }
    hx_guard_end(&g);
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

#define NOT_SELF "set Chrystoki2/LibHAExtVendor to the vendor's module (it takes precedence over LibUNIX64)"

/* dlopens module (named by key) and returns its function list, or NULL
 * after fail(). */
static CK_FUNCTION_LIST_PTR open_module(const char *module, const char *key)
{
    CK_C_GetFunctionList gfl;
    CK_FUNCTION_LIST_PTR list = NULL;
    CK_RV rv;
    void *h = dlopen(module, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (h == NULL) {
        const char *why = dlerror();
        fail("cannot load the vendor module %s (%s): %s", module, key, why != NULL ? why : "dlopen failed");
        return NULL;
    }
    gfl = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
    if (gfl == NULL) {
        fail("the vendor module %s (%s) has no C_GetFunctionList%s", module, key, "");
        return NULL;
    }
    if (front_own((void *)gfl) || dlsym(h, "CA_GetHAExtLastError") != NULL) {
        fail("%s names %s, which is a libhaext library, not the vendor's module: %s", key, module, NOT_SELF);
        return NULL;
    }
    rv = gfl(&list);
    if (rv != CKR_OK || list == NULL) {
        char code[32];
        snprintf(code, sizeof code, "0x%08lx", (unsigned long)rv);
        fail("C_GetFunctionList of the vendor module %s (%s) failed: %s", module, key, code);
        return NULL;
    }
    if (front_own(list)) {
        fail("%s names %s, which leads back to libhaext-pkcs11 itself%s", key, module, "");
        return NULL;
    }
    vendor_get_interface = (CK_C_GetInterface)dlsym(h, "C_GetInterface");
    if (vendor_get_interface != NULL && !same_object((void *)vendor_get_interface, (void *)gfl))
        vendor_get_interface = NULL; /* a library the vendor links (libp11-kit), not the vendor's own */
    return list;
}

static int load_locked(void)
{
    char conf[PATH_MAX], err[768];
    char *module = NULL;
    const char *key = "";
    CK_FUNCTION_LIST_PTR list = NULL;

    if (front_conf_locate(conf, sizeof conf, err, sizeof err) != 0)
        return fail("%s%s%s", err, "", "");
    if (front_conf_module(conf, &module, &key, err, sizeof err) != 0)
        return fail("%s%s%s", err, "", "");
    snprintf(vendor_path, sizeof vendor_path, "%s", module);
    if (is_self(module))
        fail("%s names %s, which is libhaext-pkcs11 itself: %s", key, module, NOT_SELF);
    else
        list = open_module(module, key);
    free(module);
    if (list == NULL)
        return -1;
    memcpy(&front_vendor_copy, list, sizeof front_vendor_copy);
    atomic_thread_fence(memory_order_release);
    load_error[0] = '\0';
    atomic_store_explicit(&front_vendor_list, list, memory_order_release);
    return 0;
}

int front_vendor_load(void)
{
    int rc;
    if (atomic_load_explicit(&front_vendor_list, memory_order_acquire) != NULL)
        return 0;
    if (loading)
        return fail("the vendor module loads libhaext-pkcs11 again while it is being loaded (%s%s%s)",
                    "a p11-kit module file names libhaext-pkcs11 and Chrystoki.conf names p11-kit-proxy?", "", "");
    pthread_mutex_lock(&load_mu);
    loading = 1;
    rc = atomic_load_explicit(&front_vendor_list, memory_order_acquire) != NULL ? 0 : load_locked();
    loading = 0;
    pthread_mutex_unlock(&load_mu);
    return rc;
}

/* Asks the vendor's C_GetInterface for "PKCS 11" 3.0, and for 2.40's flags;
 * copies its 3.0 list. */
static void ask_interfaces(void)
{
    CK_VERSION v30 = {3, 0}, v240 = {2, 40};
    CK_INTERFACE_PTR i = NULL;
    if (vendor_get_interface == NULL)
        return;
    if (vendor_get_interface((CK_UTF8CHAR_PTR) "PKCS 11", &v30, &i, 0) == CKR_OK && i != NULL &&
        i->pFunctionList != NULL && ((CK_VERSION *)i->pFunctionList)->major >= 3 && !front_own(i->pFunctionList)) {
        memcpy(&front_vendor_copy3, i->pFunctionList, sizeof front_vendor_copy3);
        ifaces.flags3 = i->flags;
        ifaces.has30 = 1;
    }
    i = NULL;
    if (vendor_get_interface((CK_UTF8CHAR_PTR) "PKCS 11", &v240, &i, 0) == CKR_OK && i != NULL)
        ifaces.flags240 = i->flags;
}

const struct front_vendor_ifaces *front_vendor_interfaces(void)
{
    if (atomic_load_explicit(&ifaces_asked, memory_order_acquire))
        return &ifaces;
    if (loading)
        return NULL; /* the vendor's C_GetInterface asks the front */
    pthread_mutex_lock(&load_mu);
    loading = 1;
    if (!atomic_load_explicit(&ifaces_asked, memory_order_relaxed)) {
        ask_interfaces();
        atomic_store_explicit(&ifaces_asked, 1, memory_order_release);
    }
    loading = 0;
    pthread_mutex_unlock(&load_mu);
    return &ifaces;
}

const char *front_vendor_error(void)
{
    return load_error;
}

const char *front_vendor_path(void)
{
    return vendor_path;
}

void front_vendor_reset(void)
{
    pthread_mutex_init(&load_mu, NULL);
}
