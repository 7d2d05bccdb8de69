"""The Llama 2 chat format: Meta's ``generation.py`` by default, a checkpoint's chat template if it has one.

Without a template (``tokenizer_config.json`` has no ``chat_template``), each turn is encoded on
its own, as Meta's code does. With the Llama-2-chat template of the Hugging Face repos, the
conversation is written out as one string and encoded as transformers does (special tokens
parsed, no BOS added); that template is rendered here in Python, so jinja2 is not needed for it.
Any other template is rendered with jinja2 (sandboxed, as transformers does), when installed.
"""

from __future__ import annotations

import json

from ..errors import TokenizerError
from .encoding import BatchEncoding, _to_tensor

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
CHAT_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")

# The chat_template of the meta-llama/Llama-2-*-chat-hf repos, character for character.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")


class ChatMixin:
    """``apply_chat_template`` for Llama 2 chat models."""

    def apply_chat_template(self, conversation, add_generation_prompt: bool = False, tokenize: bool = True,
                            return_dict: bool = True, chat_template: str | None = None,
                            return_tensors: str | None = None, **template_kwargs):
        """A conversation (or a list of them) as ids, text, or a BatchEncoding.

        conversation: an optional {"role": "system"} first, then alternating "user" and
        "assistant" turns, each {"role": ..., "content": str}.
        Without a chat template (the argument or the file's), Meta's format: each exchange
        encoded on its own as BOS + "[INST] {user} [/INST] {answer} " + EOS, an unanswered last
        user turn as BOS + "[INST] {user} [/INST]", the system prompt in <<SYS>> tags inside the
        first user turn. With a template, its text encoded as transformers does
        (``parse_special_tokens=True``, no BOS added): after "<s>", "[INST]" gets no dummy
        prefix, so the ids differ from Meta's at that one piece per turn.
        tokenize=False returns the text ("<s>"/"</s>" standing for BOS/EOS; the same string in
        both cases). return_dict=True (the default, as in transformers 5) returns a BatchEncoding of
        input_ids and attention_mask; return_dict=False the ids alone (transformers 4's default). Llama 2's format has no
        generation prompt: add_generation_prompt changes nothing for it.
        """
        batched = isinstance(conversation, (list, tuple)) and bool(conversation) and \
            isinstance(conversation[0], (list, tuple))
        template = self.chat_template if chat_template is None else chat_template
        if template is not None and not isinstance(template, str):
            raise TokenizerError(f"chat_template must be a str, got {type(template).__name__}")
        results = [self._one_chat(c, template, add_generation_prompt, tokenize, template_kwargs)
                   for c in (conversation if batched else [conversation])]
        if not tokenize:
            return results if batched else results[0]
        if not return_dict and return_tensors is None:
            return results if batched else results[0]
        masks = [[1] * len(r) for r in results]
        if return_tensors is not None:
            if len({len(r) for r in results}) > 1:
                raise TokenizerError("the conversations encode to different lengths: no tensor can hold them")
            results, masks = _to_tensor(results, return_tensors), _to_tensor(masks, return_tensors)
            if not return_dict:
                return results  # (conversations, length), one row even for a single conversation
        elif not batched:
            results, masks = results[0], masks[0]
        return BatchEncoding(input_ids=results, attention_mask=masks)

    def _one_chat(self, messages, template, add_generation_prompt, tokenize, template_kwargs):
        if template is None:
            return self._meta_chat(messages, tokenize)
        if template.strip() == LLAMA2_CHAT_TEMPLATE:
            text = self._meta_chat(messages, tokenize=False)  # the very string the template renders
        else:
            text = self._render_template(template, messages, add_generation_prompt, template_kwargs)
        return self.encode(text, add_special_tokens=False, parse_special_tokens=True) if tokenize else text

    def _meta_chat(self, messages, tokenize: bool):
        ids, text = [], ""
        for user, answer in _chat_turns(messages):
            if answer is None:
                body = f"{B_INST} {user.strip()} {E_INST}"
                ids += self.encode(body, bos=True, eos=False)
                text += self.bos_token + body
            else:
                body = f"{B_INST} {user.strip()} {E_INST} {answer.strip()} "
                ids += self.encode(body, bos=True, eos=True)
                text += self.bos_token + body + self.eos_token
        return ids if tokenize else text

    def _render_template(self, template: str, messages, add_generation_prompt: bool, template_kwargs) -> str:
        """Any other Jinja chat template, rendered as transformers does it (needs jinja2)."""
        try:
            import jinja2  # noqa: F401  (the package itself, not only a cached jinja2.sandbox)
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise TokenizerError("this chat template is not Llama 2's: rendering it needs jinja2 (pip install jinja2)") from None

        def raise_exception(message):
            raise TokenizerError(f"chat template: {message}"[:300])

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        specials = {"bos_token": self.bos_token, "eos_token": self.eos_token, "unk_token": self.unk_token,
                    "pad_token": self.pad_token}
        if not isinstance(messages, (list, tuple)) or not messages or not all(isinstance(m, dict) for m in messages):
            raise TokenizerError("a chat must be a non-empty list of message dicts")
        try:
            return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                    **{**specials, **template_kwargs})
        except TokenizerError:
            raise
        except Exception as error:  # a template is code from the checkpoint: any failure is reported, in one line
            detail = (str(error).strip().splitlines() or [""])[0]
            raise TokenizerError(f"chat template: {type(error).__name__}: {detail}"[:300]) from None


def _chat_turns(messages) -> list[tuple[str, str | None]]:
    """Check a conversation and pair it into (user, answer-or-None) turns, the system prompt folded in."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TokenizerError("a chat needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant"):
            raise TokenizerError(f"message {i} must be a dict with role system/user/assistant and str content, got {m!r}")
        for tag in CHAT_TAGS:
            if tag in m["content"]:
                raise TokenizerError(f"message {i} contains the chat tag {tag!r}, which would break the format")
    messages = list(messages)
    if messages[0]["role"] == "system":
        if len(messages) < 2:
            raise TokenizerError("a system prompt must be followed by a user message")
        system = messages[0]["content"]
        messages = [{"role": messages[1]["role"], "content": B_SYS + system + E_SYS + messages[1]["content"]}] + messages[2:]
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise TokenizerError(f"chat roles must alternate user/assistant (after an optional system), "
                                 f"but turn {i} is {m['role']!r}")
    users, answers = messages[0::2], messages[1::2]
    return [(u["content"], answers[i]["content"] if i < len(answers) else None) for i, u in enumerate(users)]
