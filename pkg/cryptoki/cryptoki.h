/* cryptoki.h - the C side of pkg/cryptoki (see cryptoki.c). */
#ifndef HAEXT_CRYPTOKI_H
#define HAEXT_CRYPTOKI_H

#include "call.h"

unsigned long cryptoki_sigpipes_taken(void);
CK_RV cryptoki_load(const char *path, void **handle, CK_FUNCTION_LIST_PTR *list, int *per_caller, const char **why);
CK_RV cryptoki_get_info(struct haext_vendor *v, CK_INFO *info);
CK_RV cryptoki_initialize(struct haext_vendor *v);
CK_RV cryptoki_finalize(struct haext_vendor *v);
CK_RV cryptoki_slot_list(struct haext_vendor *v, CK_SLOT_ID *slots, CK_ULONG *count);
CK_RV cryptoki_token_info(struct haext_vendor *v, CK_SLOT_ID slot, CK_TOKEN_INFO *info);
CK_RV cryptoki_open_session(struct haext_vendor *v, CK_SLOT_ID slot, CK_SESSION_HANDLE *session);
CK_RV cryptoki_close_session(struct haext_vendor *v, CK_SESSION_HANDLE session);
CK_RV cryptoki_session_info(struct haext_vendor *v, CK_SESSION_HANDLE session);

#endif
