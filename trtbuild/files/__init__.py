"""The files trtbuild reads and writes: one reader (and writer) per format, and nothing else opens
them. Formats trtbuild owns are validated strictly (``extra="forbid"``); formats other tools write
(Hugging Face, TensorRT-LLM, Triton) are read tolerantly, keeping what trtbuild uses.

| file | module | read / write |
|---|---|---|
| Hugging Face ``config.json``, ``hf_quant_config.json``, ``generation_config.json`` | ``files.hf`` | ``read_hf_config`` ... |
| a tokenizer directory (``tokenizer.json``, ``tokenizer_config.json``, ...) | ``files.hf`` | ``read_tokenizer_files``, ``normalise_tokenizer_config`` |
| the Hugging Face cache layout (``models--org--name/snapshots/<commit>``) | ``files.hf`` | ``snapshot_dir``, ``parse_snapshot`` |
| ``trtbuild-checkpoint.json`` (``trtbuild download``) | ``files.checkpoint_manifest`` | ``read_checkpoint_manifest``, ``write_checkpoint_manifest`` |
| TensorRT-LLM engine and checkpoint directories (``config.json``, ``rank{N}.*``) | ``files.trtllm`` | ``read_engine_config``, ``read_trtllm_checkpoint_config``, ``rank_files`` |
| ``trtbuild-engine.json`` (``trtbuild engine``) | ``builder.manifest`` | ``read_manifest``, ``write_manifest`` |
| a ``trtbuild plan --json`` file | ``files.plan_file`` | ``read_plan``, ``write_plan`` |
| ``trtbuild-repo.json`` (``trtbuild repo``) | ``files.repo_spec`` | ``read_repo_spec``, ``write_repo_spec`` |
| a model repository's ``config.pbtxt`` files | ``files.model_config`` | ``parse_config``, ``load_configs``, ``read_model_files`` |
| TensorRT-LLM facts (``ensembles/upstream/*.json``) | ``ensembles.upstream`` | ``facts`` |

The Triton ``model.py`` files and the runtime modules copied next to them run inside
tritonserver without trtbuild, so they read their own ``tokenizer_config.json``.
"""
