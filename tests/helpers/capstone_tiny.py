"""The tiny capstone the CLI and run tests share: one set of settings, as config fields and as flags."""

# A one-layer Qwen2 on sums up to 9 whose SFT takes a second or two; every test of a whole run uses it.
TINY_SETTINGS = dict(
    max_operand=9,
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=64,
    sft_steps=40,
    sft_batch_size=32,
    prompts_per_step=2,
    group_size=4,
    max_new_tokens=3,
    lr=1e-3,
    format_reward=0.5,
)


def cli_flags(settings: dict = TINY_SETTINGS) -> list[str]:
    """The command-line flags that give ``settings`` (``--max-operand 9 --hidden-size 32 ...``)."""
    out: list[str] = []
    for name, value in settings.items():
        out += ["--" + name.replace("_", "-"), str(value)]
    return out
