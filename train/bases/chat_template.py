"""The Gemma 3 chat template gemlora writes into every base it builds.

It renders exactly what Google's Gemma 3 instruction-tuned template renders, plus
`{% generation %}` markers around each assistant reply so that transformers'
`return_assistant_tokens_mask` (and TRL's `assistant_only_loss`) can find the tokens to train:

    <bos><start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n{reply}<end_of_turn>\n

- a leading system message is folded into the first user turn (Gemma 3 has no system role);
- `assistant` is rendered as `model`;
- roles after the system message must alternate user/assistant, starting with user;
- an image part (`{"type": "image"}` or OpenAI's `image_url`) renders as `<start_of_image>`,
  which the processor expands to the image's soft tokens.
"""

import hashlib

GEMMA3_CHAT_TEMPLATE = """
{%- macro render_content(content) -%}
    {%- if content is string -%}
        {{- content | trim -}}
    {%- else -%}
        {%- for part in content -%}
            {%- if part['type'] in ['image', 'image_url'] -%}
                {{- '<start_of_image>' -}}
            {%- elif part['type'] == 'text' -%}
                {{- part['text'] | trim -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{{- bos_token -}}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = render_content(messages[0]['content']) + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if message['role'] not in ['user', 'assistant'] -%}
        {{- raise_exception('Conversation roles must be user or assistant after an optional first system message; message ' ~ loop.index0 ~ ' has role ' ~ message['role']) -}}
    {%- endif -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/... starting with user; message ' ~ loop.index0 ~ ' is ' ~ message['role']) -}}
    {%- endif -%}
    {%- if message['role'] == 'assistant' -%}
        {{- '<start_of_turn>model\n' -}}
        {%- generation -%}
            {{- render_content(message['content']) + '<end_of_turn>' -}}
        {%- endgeneration -%}
        {{- '\n' -}}
    {%- else -%}
        {{- '<start_of_turn>user\n' + (first_user_prefix if loop.first else '') -}}
        {{- render_content(message['content']) + '<end_of_turn>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\n' -}}
{%- endif -%}
"""


def chat_template_hash(template: str = GEMMA3_CHAT_TEMPLATE) -> str:
    """Short digest recorded with every adapter: a changed template changes what was trained."""
    return hashlib.sha256(template.encode()).hexdigest()[:16]
