/*
 * engine.h: the engine and session structs, shared by engine.c and
 * session.c (internal; the public view is msa.h section 4d).
 */
#ifndef MSA_ENGINE_H
#define MSA_ENGINE_H

#include "engine/model.h"
#include "engine/msa.h"

struct msa_engine {
    msa_engine_params p;   /* as given, with defaults filled in */
    char *model_path;
    msa_model *model;
    msa_model_info info;
    msa_tokenizer *tok;
    msa_store *store;
    int chat_template;
};

#endif /* MSA_ENGINE_H */
