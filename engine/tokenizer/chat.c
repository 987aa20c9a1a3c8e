/*
 * chat.c: chat templates, the text around each message that tells a chat
 * model who is speaking.
 *
 * Four formats cover the models this engine runs today: Llama-3
 * (<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>), ChatML as
 * Qwen2 uses it (<|im_start|>role\n...<|im_end|>\n), Llama-2 ([INST] ...
 * [/INST]) and plain ("User: ...\nAssistant: "). The template is recognised
 * from the markers in the model's own Jinja template (tokenizer.chat_template)
 * rather than by evaluating Jinja: the markers are unambiguous and the
 * formats are fixed.
 */
#include <stdio.h>
#include <string.h>

#include "base/base.h"

static const char *const names[] = {"plain", "llama3", "chatml", "llama2"};

int msa_chat_template_from_name(const char *name) {
    if (!name) return MSA_EINVAL;
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) return i;
    if (!strcmp(name, "qwen2") || !strcmp(name, "qwen")) return MSA_CHAT_CHATML;
    return msa_error(MSA_EINVAL, "unknown chat template '%s' (plain, llama3, chatml, llama2)",
                     name);
}

const char *msa_chat_template_name(int tmpl) {
    return tmpl >= 0 && tmpl < 4 ? names[tmpl] : "?";
}

int msa_chat_template_detect(const char *jinja) {
    if (!jinja) return MSA_CHAT_PLAIN;
    if (strstr(jinja, "<|start_header_id|>")) return MSA_CHAT_LLAMA3;
    if (strstr(jinja, "<|im_start|>")) return MSA_CHAT_CHATML;
    if (strstr(jinja, "[INST]")) return MSA_CHAT_LLAMA2;
    return MSA_CHAT_PLAIN;
}

/* Appends with snprintf semantics: *len counts what would be written. */
static void put(char *buf, size_t cap, size_t *len, const char *s) {
    size_t n = strlen(s);
    if (*len < cap) {
        size_t room = cap - *len - 1;
        memcpy(buf + *len, s, n < room ? n : room);
        buf[*len + (n < room ? n : room)] = 0;
    }
    *len += n;
}

size_t msa_chat_render(int tmpl, const char *role, const char *content,
                       int add_generation_prompt, char *buf, size_t cap) {
    size_t len = 0;
    if (buf && cap) buf[0] = 0;
    else cap = 0;
    if (!role) role = "user";
    if (!content) content = "";
    switch (tmpl) {
    case MSA_CHAT_LLAMA3:
        put(buf, cap, &len, "<|start_header_id|>");
        put(buf, cap, &len, role);
        put(buf, cap, &len, "<|end_header_id|>\n\n");
        put(buf, cap, &len, content);
        put(buf, cap, &len, "<|eot_id|>");
        if (add_generation_prompt)
            put(buf, cap, &len, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case MSA_CHAT_CHATML:
        put(buf, cap, &len, "<|im_start|>");
        put(buf, cap, &len, role);
        put(buf, cap, &len, "\n");
        put(buf, cap, &len, content);
        put(buf, cap, &len, "<|im_end|>\n");
        if (add_generation_prompt) put(buf, cap, &len, "<|im_start|>assistant\n");
        break;
    case MSA_CHAT_LLAMA2:
        if (!strcmp(role, "system")) {
            put(buf, cap, &len, "[INST] <<SYS>>\n");
            put(buf, cap, &len, content);
            put(buf, cap, &len, "\n<</SYS>>\n\n[/INST]");
        } else if (!strcmp(role, "assistant")) {
            put(buf, cap, &len, " ");
            put(buf, cap, &len, content);
            put(buf, cap, &len, " </s>");
        } else {
            put(buf, cap, &len, "[INST] ");
            put(buf, cap, &len, content);
            put(buf, cap, &len, " [/INST]");
        }
        break;
    default: /* plain */
        put(buf, cap, &len, !strcmp(role, "assistant") ? "Assistant: "
                            : !strcmp(role, "system") ? "System: " : "User: ");
        put(buf, cap, &len, content);
        put(buf, cap, &len, "\n");
        if (add_generation_prompt) put(buf, cap, &len, "Assistant:");
        break;
    }
    return len;
}
