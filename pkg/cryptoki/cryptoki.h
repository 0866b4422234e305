/* cryptoki.h - the C side of pkg/cryptoki (see cryptoki.c). */
#ifndef HAEXT_CRYPTOKI_H
#define HAEXT_CRYPTOKI_H

#include "call.h"

unsigned long hx_sigpipes_drained(void);
CK_RV hx_load(const char *path, void **handle, CK_FUNCTION_LIST_PTR *list, int *per_caller, const char **why);
CK_RV hx_get_info(struct haext_host *h, CK_INFO *info);
CK_RV hx_initialize(struct haext_host *h);
CK_RV hx_finalize(struct haext_host *h);
CK_RV hx_slot_list(struct haext_host *h, CK_SLOT_ID *slots, CK_ULONG *count);
CK_RV hx_token_info(struct haext_host *h, CK_SLOT_ID slot, CK_TOKEN_INFO *info);
CK_RV hx_open_session(struct haext_host *h, CK_SLOT_ID slot, CK_SESSION_HANDLE *session);
CK_RV hx_close_session(struct haext_host *h, CK_SESSION_HANDLE session);
CK_RV hx_session_info(struct haext_host *h, CK_SESSION_HANDLE session);

#endif
