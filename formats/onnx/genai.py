"""The files onnxruntime-genai reads beside a model: genai_config.json (the decoder's input/output names,
shapes and search defaults) and, where the GGUF's tokenizer can be written in HF `tokenizers` form,
tokenizer.json + tokenizer_config.json.

Only the `ort` flavor gets them: genai creates its sessions with onnxruntime's default options, under
which the standard flavor's DequantizeLinear -> MatMul pairs are fused into MatMulNBits with int8
activations (accuracy level 4, a visible error); the ort flavor states accuracy_level=0 in every
MatMulNBits node, so genai computes what quantconv's runner does. Our graph concatenates the cache
(present = past + new), so past_present_share_buffer is false.

tokenizer.json is written for byte-level BPE vocabularies ("gpt2" model) whose pre-tokenizer is one
regex family (gpt2, smollm, llama3, qwen2 in formats/tokenizer.py); SentencePiece ("llama" model)
vocabularies carry scores, not the merges tokenizer.json needs, and llama.cpp's multi-stage "default"
pre-tokenizer has no single HF form: for those only genai_config.json is written (and a note says so).

Every family's graph is self-contained (soft-capping, sliding-window masks, LongRoPE's choice of factors
are nodes of the graph, and every layer keeps its whole cache), so genai needs only the model type it
knows the family by (GENAI_TYPES: Gemma 3 text models are "gemma3_text"; genai's "gemma3" is the
vision-language model) and no `sliding_window` section (that would make genai trim the caches that our
global layers still read). An architecture genai has no LLM type for gets no genai_config.json, and a note.
"""
from __future__ import annotations

import json
from typing import Any

# the GGUF pre-tokenizer families of quantconv's own tokenizer (formats/tokenizer.py): the regexes are
# written over explicit character classes there; HF's form uses \p{..} / \s
from quantconv.errors import QuantconvError
from quantconv.formats.tokenizer import PRETOKENIZER_FAMILIES, PRE_TOKENIZERS

CONTROL, USER_DEFINED = 3, 4
# GGUF architecture -> onnxruntime-genai model type (its decoder-only LLM types, src/models/model_type.h)
GENAI_TYPES = {"llama": "llama", "qwen2": "qwen2", "mistral": "mistral", "qwen3": "qwen3", "gemma2": "gemma2",
               "gemma3": "gemma3_text", "phi3": "phi3"}


def genai_config(kv: dict[str, Any], cfg: dict, model_file: str) -> dict:
    arch = kv.get("general.architecture", "llama")
    if arch not in GENAI_TYPES:
        raise QuantconvError(f"onnxruntime-genai has no model type for the '{arch}' architecture (it knows "
                             f"{', '.join(GENAI_TYPES)}); use quantconv's own runner for this .onnx file")
    ctx = int(kv.get(f"{arch}.context_length", 2048))
    eos = kv.get("tokenizer.ggml.eos_token_id")
    bos = kv.get("tokenizer.ggml.bos_token_id")
    pad = kv.get("tokenizer.ggml.padding_token_id", eos)
    return {
        "model": {
            "bos_token_id": bos, "context_length": ctx, "eos_token_id": eos, "pad_token_id": pad,
            "type": GENAI_TYPES[arch], "vocab_size": int(cfg["n_vocab"]),
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file, "head_size": int(cfg["head_dim"]),
                "hidden_size": int(cfg["n_embd"]),
                "num_attention_heads": int(cfg["n_head"]), "num_key_value_heads": int(cfg["n_head_kv"]),
                "num_hidden_layers": int(cfg["n_layer"]),
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": ctx, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def _hf_regex(pattern: str) -> str:
    return pattern.format(L=r"\p{L}", N=r"\p{N}", P=r"\p{P}", W=r"\s")


def tokenizer_files(kv: dict[str, Any]) -> tuple[dict[str, dict] | None, str | None]:
    """({"tokenizer.json": ..., "tokenizer_config.json": ...}, None), or (None, why not)."""
    model, pre = kv.get("tokenizer.ggml.model"), kv.get("tokenizer.ggml.pre") or "default"
    if model != "gpt2":
        return None, (f"tokenizer.ggml.model '{model}' (SentencePiece) stores scores, not the merges tokenizer.json "
                      "needs: copy the source model's tokenizer.json beside the .onnx for onnxruntime-genai")
    family, ignore_merges, pre_bos = PRE_TOKENIZERS.get(pre, ("default", False, False))
    stages = PRETOKENIZER_FAMILIES[family]
    if len(stages) != 1:
        return None, (f"tokenizer.ggml.pre '{pre}' is a multi-stage llama.cpp pre-tokenizer with no single "
                      "tokenizer.json form: copy the source model's tokenizer.json beside the .onnx")
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": family == "gpt2"}
    if family == "gpt2":
        pre_tok = byte_level
    elif family == "smollm":   # each digit alone, then GPT-2's regex: HF's own form for SmolLM/StarCoder
        pre_tok = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                         {**byte_level, "use_regex": True}]}
    else:
        pre_tok = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": _hf_regex(stages[0][0])}, "behavior": "Isolated", "invert": False},
            byte_level]}
    add_bos = bool(kv.get("tokenizer.ggml.add_bos_token", pre_bos))
    bos, eos = kv.get("tokenizer.ggml.bos_token_id"), kv.get("tokenizer.ggml.eos_token_id")
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": ty == CONTROL} for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED)]
    post = None
    if add_bos and bos is not None:
        bos_t = tokens[bos]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_t, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_t: {"id": bos_t, "ids": [bos], "tokens": [bos_t]}}}
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
          "pre_tokenizer": pre_tok, "post_processor": post,
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                    "ignore_merges": ignore_merges, "vocab": {t: i for i, t in enumerate(tokens)},
                    "merges": list(kv.get("tokenizer.ggml.merges", []))}}

    def text(i):
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    tc = {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": add_bos,
          "add_eos_token": bool(kv.get("tokenizer.ggml.add_eos_token", False)),
          "bos_token": text(bos), "eos_token": text(eos), "unk_token": text(kv.get("tokenizer.ggml.unknown_token_id")),
          "pad_token": text(kv.get("tokenizer.ggml.padding_token_id")), "clean_up_tokenization_spaces": False,
          "model_max_length": int(kv.get(f"{kv.get('general.architecture', 'llama')}.context_length", 2048))}
    if kv.get("tokenizer.chat_template"):
        tc["chat_template"] = kv["tokenizer.chat_template"]
    return {"tokenizer.json": tj, "tokenizer_config.json": tc}, None


def genai_files(kv: dict[str, Any], cfg: dict, model_file: str) -> tuple[dict[str, bytes], list[str]]:
    """File name -> bytes to write beside the model, and notes for the user (no files, and a note saying
    why, for an architecture onnxruntime-genai doesn't know)."""
    try:
        files = {"genai_config.json": json.dumps(genai_config(kv, cfg, model_file), indent=4).encode()}
    except QuantconvError as e:
        return {}, [f"no genai_config.json written: {e}"]
    tok, why = tokenizer_files(kv)
    notes = []
    if tok:
        try:
            files.update({name: json.dumps(obj, indent=1, ensure_ascii=False).encode() for name, obj in tok.items()})
        except UnicodeEncodeError:   # a token text with surrogate-escaped (non-UTF-8) bytes: JSON can't carry it
            notes.append("no tokenizer.json written: the vocabulary has token texts that are not valid UTF-8")
    else:
        notes.append(f"no tokenizer.json written: {why}")
    return files, notes
