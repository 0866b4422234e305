/*
 * conf.c - the vendor module's path, from the same configuration file as
 * libhaext's: finding the file as pkg/conf.Locate does, reading it, and
 * taking the module key (conf_parse.c reads the keys).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"

#define MAX_FILE (4 << 20) /* pkg/conf's limit */

static int regular_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int front_conf_locate(char *path, size_t pathlen, char *err, size_t errlen)
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

/* Takes *value out of keys when it is set and not empty. */
static int take(char **value, size_t len, char **module, size_t *module_len)
{
    if (*value == NULL || len == 0)
        return 0;
    *module = *value;
    *module_len = len;
    *value = NULL;
    return 1;
}

int front_conf_read(const char *path, struct front_conf_keys *keys, char *err, size_t errlen)
{
    size_t len = 0;
    char *data = read_file(path, &len, err, errlen);
    if (data == NULL)
        return -1;
    front_conf_parse(data, len, keys);
    free(data);
    return 0;
}

int front_conf_module(const char *path, char **module, const char **key, char *err, size_t errlen)
{
    struct front_conf_keys keys;
    size_t module_len = 0;
    if (front_conf_read(path, &keys, err, errlen) != 0)
        return -1;
    *module = NULL;
    if (take(&keys.vendor, keys.vendor_len, module, &module_len))
        *key = "Chrystoki2/LibHAExtVendor";
    else if (take(&keys.unix64, keys.unix64_len, module, &module_len))
        *key = "Chrystoki2/LibUNIX64";
    else if (take(&keys.unix32, keys.unix32_len, module, &module_len))
        *key = "Chrystoki2/LibUNIX";
    front_conf_keys_free(&keys);
    if (*module != NULL && strlen(*module) != module_len) {
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
