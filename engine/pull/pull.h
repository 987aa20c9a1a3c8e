/*
 * pull.h: the internal parts of engine/pull/pull.c that tests and the command
 * line use directly: turning a source into a URL and a file name, and the
 * default models folder. The download itself is msa_pull() in msa.h.
 */
#ifndef MSA_PULL_H
#define MSA_PULL_H

#include <stddef.h>

#include "engine/msa.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Resolves `source` (a URL or ORG/REPO[@REVISION]:PATH, see msa.h 4c)
 * against `endpoint` (NULL: $HF_ENDPOINT or https://huggingface.co) into
 * the URL to request and the file name a default destination takes (the
 * last path segment, percent-decoded). `*is_hf` is set to 1 when the URL
 * lies on the endpoint's host (the token may be sent there), else 0.
 * Returns MSA_OK; MSA_EINVAL for a malformed source, a file name that is
 * empty, "." or "..", or a result longer than the buffers. The buffers are
 * unspecified after a failure. */
int msa_pull_resolve(const char *source, const char *endpoint, char *url,
                     size_t url_n, char *name, size_t name_n, int *is_hf);

/* The default models folder, with a trailing '/': $XDG_DATA_HOME/msa-mem/
 * models/ or $HOME/.local/share/msa-mem/models/. It is not created here.
 * Returns MSA_OK; MSA_ENOTFOUND when neither variable is set; MSA_EINVAL
 * when the path does not fit in `n`. */
int msa_pull_models_dir(char *buf, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* MSA_PULL_H */
