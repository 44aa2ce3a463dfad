
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'qwen-edit' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'qwen-edit'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'qwen-edit' {
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('edit', 'edit', [CompletionResultType]::ParameterValue, 'Edit one to three images following a text instruction')
            [CompletionResult]::new('doctor', 'doctor', [CompletionResultType]::ParameterValue, 'Check whether this machine can run qwen-edit: CUDA, GPUs, memory, disk, cached models')
            [CompletionResult]::new('fetch-models', 'fetch-models', [CompletionResultType]::ParameterValue, 'Download model weights from the Hugging Face Hub into the standard hub cache')
            [CompletionResult]::new('batch', 'batch', [CompletionResultType]::ParameterValue, 'Run many edits with one loaded model: JSON lines in, one JSON result line per job out')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Serve edits: a RunPod serverless worker, a local HTTP API, or one test job')
            [CompletionResult]::new('bench', 'bench', [CompletionResultType]::ParameterValue, 'Time the full-size networks with random weights on a device (for comparing hardware)')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script to stdout')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'qwen-edit;edit' {
            [CompletionResult]::new('-p', '-p', [CompletionResultType]::ParameterName, 'The edit instruction')
            [CompletionResult]::new('--prompt', '--prompt', [CompletionResultType]::ParameterName, 'The edit instruction')
            [CompletionResult]::new('--prompt-file', '--prompt-file', [CompletionResultType]::ParameterName, 'Read the edit instruction from a file (`-` for stdin)')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'What the image should not look like (enables true CFG with --true-cfg-scale > 1). Default " "')
            [CompletionResult]::new('--negative-prompt', '--negative-prompt', [CompletionResultType]::ParameterName, 'What the image should not look like (enables true CFG with --true-cfg-scale > 1). Default " "')
            [CompletionResult]::new('--steps', '--steps', [CompletionResultType]::ParameterName, 'Denoising steps (default: 50 for Qwen-Image-Edit, 40 for 2509/2511)')
            [CompletionResult]::new('--true-cfg-scale', '--true-cfg-scale', [CompletionResultType]::ParameterName, 'True classifier-free guidance scale; 1 disables CFG (one transformer pass per step). Default 4')
            [CompletionResult]::new('--seed', '--seed', [CompletionResultType]::ParameterName, 'Random seed; the same seed gives the same initial noise as diffusers with torch.Generator("cpu").manual_seed(SEED). Default: a random seed, reported')
            [CompletionResult]::new('--width', '--width', [CompletionResultType]::ParameterName, 'Output width in pixels (floored to a multiple of 16). Default: from the input image')
            [CompletionResult]::new('--height', '--height', [CompletionResultType]::ParameterName, 'Output height in pixels (floored to a multiple of 16). Default: from the input image')
            [CompletionResult]::new('--ref-size', '--ref-size', [CompletionResultType]::ParameterName, 'Resize the reference images to about PX×PX pixels (aspect kept) before encoding them (default 1024, as the reference pipelines). Smaller is faster and keeps less of their detail')
            [CompletionResult]::new('--model', '--model', [CompletionResultType]::ParameterName, 'Hub repo id (or `edit`, `2509`, `2511`) or a local folder in the diffusers layout')
            [CompletionResult]::new('--revision', '--revision', [CompletionResultType]::ParameterName, 'Hub revision (branch, tag or commit) of the model')
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)')
            [CompletionResult]::new('--device', '--device', [CompletionResultType]::ParameterName, 'Device to run on: `cuda`, `cuda:N` or `cpu` (CPU is only practical for tiny test models)')
            [CompletionResult]::new('--dtype', '--dtype', [CompletionResultType]::ParameterName, 'Compute dtype (default: bf16 on CUDA, f32 on CPU)')
            [CompletionResult]::new('--lora', '--lora', [CompletionResultType]::ParameterName, 'Merge a LoRA into the transformer (repeatable): a .safetensors file, or a hub repo `ORG/NAME` (its only .safetensors file) or `ORG/NAME:PATH/IN/REPO.safetensors`; `@SCALE` multiplies the update (default 1). Reads diffusers/PEFT, kohya, lightx2v and DiffSynth keys')
            [CompletionResult]::new('--lightning', '--lightning', [CompletionResultType]::ParameterName, 'Few-step Lightning preset: merges the lightx2v Qwen-Image-Lightning LoRA for the loaded model (Edit, 2509 or 2511) and STEPS steps, uses its scheduler (static shift 3, no terminal stretch) and turns CFG off; --steps / --true-cfg-scale still override')
            [CompletionResult]::new('--lightning-lora', '--lightning-lora', [CompletionResultType]::ParameterName, 'The Lightning LoRA to use instead of lightx2v''s file for the model (a path or `ORG/NAME[:FILE]`, e.g. an fp32 variant or a local copy)')
            [CompletionResult]::new('--memory', '--memory', [CompletionResultType]::ParameterName, 'Which components stay on the GPU: `high` keeps all (fastest for many jobs), `low` holds one large component at a time (text encoder, then transformer; each job reloads them), `offload` keeps the transformer''s blocks in host memory and streams them to the GPU as it runs (24 GB cards; needs host RAM for the transformer), `auto` picks `high` when everything fits in the free GPU memory, else `low` when the transformer fits alone, else `offload`')
            [CompletionResult]::new('--offload-prefetch', '--offload-prefetch', [CompletionResultType]::ParameterName, 'With `--memory offload`: transformer blocks copied to the GPU ahead of the one computing, on a second CUDA stream (0: copy, then compute, no overlap). Each costs one block of GPU memory (0.68 GB in bf16, 0.34 GB in fp8)')
            [CompletionResult]::new('--weights', '--weights', [CompletionResultType]::ParameterName, 'Weight format on the GPU: `stored` as in the files, `fp8` quantizes the transformer''s and the language model''s Linear weights to float8 e4m3 (per-row scales) at load, halving their memory')
            [CompletionResult]::new('--transformer-file', '--transformer-file', [CompletionResultType]::ParameterName, 'Transformer weights from one file instead of the model folder: a `.safetensors` (bf16, or ComfyUI "scaled fp8": e4m3 weights with `scale_weight`/`weight_scale`) or a `.gguf` (Q8_0, Q6_K, Q5_K, Q4_K, …). The config still comes from the model folder')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output file, or `-` for the encoded image on stdout. Default: `<first input>-edited.png`')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output file, or `-` for the encoded image on stdout. Default: `<first input>-edited.png`')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format (default: from the output file''s extension, else png)')
            [CompletionResult]::new('--bit-depth', '--bit-depth', [CompletionResultType]::ParameterName, 'Bits per channel: 16 for lossless downstream work (PNG and TIFF only)')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal')
            [CompletionResult]::new('--offline', '--offline', [CompletionResultType]::ParameterName, 'Never touch the network: use only what is in the hub cache (also HF_HUB_OFFLINE=1)')
            [CompletionResult]::new('--no-lora-strict', '--no-lora-strict', [CompletionResultType]::ParameterName, 'Merge what matches and skip (with a warning) LoRA keys that adapt nothing in the transformer. By default such keys, text-encoder keys included, are an error naming them')
            [CompletionResult]::new('--overwrite', '--overwrite', [CompletionResultType]::ParameterName, 'Replace the output file if it exists')
            [CompletionResult]::new('--mkdir', '--mkdir', [CompletionResultType]::ParameterName, 'Create missing parent folders of the output file')
            [CompletionResult]::new('--vae-tiling', '--vae-tiling', [CompletionResultType]::ParameterName, 'Decode/encode the VAE in tiles (256 px tiles, 192 px stride): less memory for large images')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print a JSON summary on stdout (outputs, seed, sizes, steps, model, timings)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'qwen-edit;doctor' {
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Hub cache folder to inspect (default: the standard hub cache)')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print the report as JSON on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'qwen-edit;fetch-models' {
            [CompletionResult]::new('--model', '--model', [CompletionResultType]::ParameterName, 'Hub repo id, or a shorthand: `edit`, `2509`, `2511`')
            [CompletionResult]::new('--revision', '--revision', [CompletionResultType]::ParameterName, 'Hub revision (branch, tag or commit)')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'Hub token for gated or private repos')
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)')
            [CompletionResult]::new('--jobs', '--jobs', [CompletionResultType]::ParameterName, 'Files downloaded at once')
            [CompletionResult]::new('--lightning', '--lightning', [CompletionResultType]::ParameterName, 'Also fetch the Lightning LoRAs of the model (`4`, `8`, or both when no value is given)')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'List the files and the total size, download nothing')
            [CompletionResult]::new('--offline', '--offline', [CompletionResultType]::ParameterName, 'Don''t touch the network: report whether the cache already holds a complete snapshot (exit 0) or not (exit 4). Also HF_HUB_OFFLINE=1')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print a JSON summary on stdout')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'qwen-edit;batch' {
            [CompletionResult]::new('--model', '--model', [CompletionResultType]::ParameterName, 'Hub repo id (or `edit`, `2509`, `2511`) or a local folder in the diffusers layout')
            [CompletionResult]::new('--revision', '--revision', [CompletionResultType]::ParameterName, 'Hub revision (branch, tag or commit) of the model')
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)')
            [CompletionResult]::new('--device', '--device', [CompletionResultType]::ParameterName, 'Device to run on: `cuda`, `cuda:N` or `cpu` (CPU is only practical for tiny test models)')
            [CompletionResult]::new('--dtype', '--dtype', [CompletionResultType]::ParameterName, 'Compute dtype (default: bf16 on CUDA, f32 on CPU)')
            [CompletionResult]::new('--lora', '--lora', [CompletionResultType]::ParameterName, 'Merge a LoRA into the transformer (repeatable): a .safetensors file, or a hub repo `ORG/NAME` (its only .safetensors file) or `ORG/NAME:PATH/IN/REPO.safetensors`; `@SCALE` multiplies the update (default 1). Reads diffusers/PEFT, kohya, lightx2v and DiffSynth keys')
            [CompletionResult]::new('--lightning', '--lightning', [CompletionResultType]::ParameterName, 'Few-step Lightning preset: merges the lightx2v Qwen-Image-Lightning LoRA for the loaded model (Edit, 2509 or 2511) and STEPS steps, uses its scheduler (static shift 3, no terminal stretch) and turns CFG off; --steps / --true-cfg-scale still override')
            [CompletionResult]::new('--lightning-lora', '--lightning-lora', [CompletionResultType]::ParameterName, 'The Lightning LoRA to use instead of lightx2v''s file for the model (a path or `ORG/NAME[:FILE]`, e.g. an fp32 variant or a local copy)')
            [CompletionResult]::new('--memory', '--memory', [CompletionResultType]::ParameterName, 'Which components stay on the GPU: `high` keeps all (fastest for many jobs), `low` holds one large component at a time (text encoder, then transformer; each job reloads them), `offload` keeps the transformer''s blocks in host memory and streams them to the GPU as it runs (24 GB cards; needs host RAM for the transformer), `auto` picks `high` when everything fits in the free GPU memory, else `low` when the transformer fits alone, else `offload`')
            [CompletionResult]::new('--offload-prefetch', '--offload-prefetch', [CompletionResultType]::ParameterName, 'With `--memory offload`: transformer blocks copied to the GPU ahead of the one computing, on a second CUDA stream (0: copy, then compute, no overlap). Each costs one block of GPU memory (0.68 GB in bf16, 0.34 GB in fp8)')
            [CompletionResult]::new('--weights', '--weights', [CompletionResultType]::ParameterName, 'Weight format on the GPU: `stored` as in the files, `fp8` quantizes the transformer''s and the language model''s Linear weights to float8 e4m3 (per-row scales) at load, halving their memory')
            [CompletionResult]::new('--transformer-file', '--transformer-file', [CompletionResultType]::ParameterName, 'Transformer weights from one file instead of the model folder: a `.safetensors` (bf16, or ComfyUI "scaled fp8": e4m3 weights with `scale_weight`/`weight_scale`) or a `.gguf` (Q8_0, Q6_K, Q5_K, Q4_K, …). The config still comes from the model folder')
            [CompletionResult]::new('--output-dir', '--output-dir', [CompletionResultType]::ParameterName, 'Folder for jobs without an `output` path (named `<line index>.png`)')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal')
            [CompletionResult]::new('--offline', '--offline', [CompletionResultType]::ParameterName, 'Never touch the network: use only what is in the hub cache (also HF_HUB_OFFLINE=1)')
            [CompletionResult]::new('--no-lora-strict', '--no-lora-strict', [CompletionResultType]::ParameterName, 'Merge what matches and skip (with a warning) LoRA keys that adapt nothing in the transformer. By default such keys, text-encoder keys included, are an error naming them')
            [CompletionResult]::new('--overwrite', '--overwrite', [CompletionResultType]::ParameterName, 'Replace existing output files')
            [CompletionResult]::new('--mkdir', '--mkdir', [CompletionResultType]::ParameterName, 'Create missing output folders')
            [CompletionResult]::new('--vae-tiling', '--vae-tiling', [CompletionResultType]::ParameterName, 'Tiled VAE encode/decode')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'qwen-edit;serve' {
            [CompletionResult]::new('--model', '--model', [CompletionResultType]::ParameterName, 'Hub repo id (or `edit`, `2509`, `2511`) or a local folder in the diffusers layout')
            [CompletionResult]::new('--revision', '--revision', [CompletionResultType]::ParameterName, 'Hub revision (branch, tag or commit) of the model')
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)')
            [CompletionResult]::new('--device', '--device', [CompletionResultType]::ParameterName, 'Device to run on: `cuda`, `cuda:N` or `cpu` (CPU is only practical for tiny test models)')
            [CompletionResult]::new('--dtype', '--dtype', [CompletionResultType]::ParameterName, 'Compute dtype (default: bf16 on CUDA, f32 on CPU)')
            [CompletionResult]::new('--lora', '--lora', [CompletionResultType]::ParameterName, 'Merge a LoRA into the transformer (repeatable): a .safetensors file, or a hub repo `ORG/NAME` (its only .safetensors file) or `ORG/NAME:PATH/IN/REPO.safetensors`; `@SCALE` multiplies the update (default 1). Reads diffusers/PEFT, kohya, lightx2v and DiffSynth keys')
            [CompletionResult]::new('--lightning', '--lightning', [CompletionResultType]::ParameterName, 'Few-step Lightning preset: merges the lightx2v Qwen-Image-Lightning LoRA for the loaded model (Edit, 2509 or 2511) and STEPS steps, uses its scheduler (static shift 3, no terminal stretch) and turns CFG off; --steps / --true-cfg-scale still override')
            [CompletionResult]::new('--lightning-lora', '--lightning-lora', [CompletionResultType]::ParameterName, 'The Lightning LoRA to use instead of lightx2v''s file for the model (a path or `ORG/NAME[:FILE]`, e.g. an fp32 variant or a local copy)')
            [CompletionResult]::new('--memory', '--memory', [CompletionResultType]::ParameterName, 'Which components stay on the GPU: `high` keeps all (fastest for many jobs), `low` holds one large component at a time (text encoder, then transformer; each job reloads them), `offload` keeps the transformer''s blocks in host memory and streams them to the GPU as it runs (24 GB cards; needs host RAM for the transformer), `auto` picks `high` when everything fits in the free GPU memory, else `low` when the transformer fits alone, else `offload`')
            [CompletionResult]::new('--offload-prefetch', '--offload-prefetch', [CompletionResultType]::ParameterName, 'With `--memory offload`: transformer blocks copied to the GPU ahead of the one computing, on a second CUDA stream (0: copy, then compute, no overlap). Each costs one block of GPU memory (0.68 GB in bf16, 0.34 GB in fp8)')
            [CompletionResult]::new('--weights', '--weights', [CompletionResultType]::ParameterName, 'Weight format on the GPU: `stored` as in the files, `fp8` quantizes the transformer''s and the language model''s Linear weights to float8 e4m3 (per-row scales) at load, halving their memory')
            [CompletionResult]::new('--transformer-file', '--transformer-file', [CompletionResultType]::ParameterName, 'Transformer weights from one file instead of the model folder: a `.safetensors` (bf16, or ComfyUI "scaled fp8": e4m3 weights with `scale_weight`/`weight_scale`) or a `.gguf` (Q8_0, Q6_K, Q5_K, Q4_K, …). The config still comes from the model folder')
            [CompletionResult]::new('--test-input', '--test-input', [CompletionResultType]::ParameterName, 'Run one job and print its result as JSON on stdout: a file, or the JSON text itself, in RunPod''s request shape `{"input": {...}}`')
            [CompletionResult]::new('--http', '--http', [CompletionResultType]::ParameterName, 'Serve a local HTTP API on ADDR (e.g. 127.0.0.1:8000): POST /runsync, POST /run, GET /status/ID, GET /health, also under /v2/ENDPOINT/')
            [CompletionResult]::new('--api-key', '--api-key', [CompletionResultType]::ParameterName, 'Require this key in the `Authorization` header (raw or `Bearer KEY`) of --http requests')
            [CompletionResult]::new('--allow-path', '--allow-path', [CompletionResultType]::ParameterName, 'Allow jobs to read local image files below DIR (repeatable). None by default: paths are refused')
            [CompletionResult]::new('--max-image-mb', '--max-image-mb', [CompletionResultType]::ParameterName, 'Largest input image (file, download or decoded base64), in MiB')
            [CompletionResult]::new('--max-request-mb', '--max-request-mb', [CompletionResultType]::ParameterName, 'Largest job or HTTP request body, in MiB')
            [CompletionResult]::new('--fetch-timeout', '--fetch-timeout', [CompletionResultType]::ParameterName, 'Time allowed for downloading one image URL, in seconds')
            [CompletionResult]::new('--progress-interval', '--progress-interval', [CompletionResultType]::ParameterName, 'Post an IN_PROGRESS update (step and steps) at most every SECS seconds while a job runs (RunPod worker mode; 0: never)')
            [CompletionResult]::new('--poll-timeout', '--poll-timeout', [CompletionResultType]::ParameterName, 'How long one job request (a long poll) may wait for an answer, in seconds')
            [CompletionResult]::new('--post-timeout', '--post-timeout', [CompletionResultType]::ParameterName, 'Time allowed for posting one result or progress update, in seconds')
            [CompletionResult]::new('--post-tries', '--post-tries', [CompletionResultType]::ParameterName, 'Attempts at posting a result before it is given up (and logged as lost)')
            [CompletionResult]::new('--backoff-ms', '--backoff-ms', [CompletionResultType]::ParameterName, 'Wait after a "no job" answer and before the first retry of a failed request; doubled on each further failure, up to 60 s')
            [CompletionResult]::new('--queue-size', '--queue-size', [CompletionResultType]::ParameterName, 'Jobs an --http server queues before it answers 429')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal')
            [CompletionResult]::new('--offline', '--offline', [CompletionResultType]::ParameterName, 'Never touch the network: use only what is in the hub cache (also HF_HUB_OFFLINE=1)')
            [CompletionResult]::new('--no-lora-strict', '--no-lora-strict', [CompletionResultType]::ParameterName, 'Merge what matches and skip (with a warning) LoRA keys that adapt nothing in the transformer. By default such keys, text-encoder keys included, are an error naming them')
            [CompletionResult]::new('--no-warmup', '--no-warmup', [CompletionResultType]::ParameterName, 'Skip the warm-up edit at startup')
            [CompletionResult]::new('--vae-tiling', '--vae-tiling', [CompletionResultType]::ParameterName, 'Tiled VAE encode/decode')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'qwen-edit;bench' {
            [CompletionResult]::new('--component', '--component', [CompletionResultType]::ParameterName, 'Components to time (repeatable; default: all three, or none when `--load` is given)')
            [CompletionResult]::new('--size', '--size', [CompletionResultType]::ParameterName, 'Square image sizes in pixels')
            [CompletionResult]::new('--refs', '--refs', [CompletionResultType]::ParameterName, 'Reference image counts for the transformer')
            [CompletionResult]::new('--txt-len', '--txt-len', [CompletionResultType]::ParameterName, 'Text tokens for the transformer')
            [CompletionResult]::new('--warmup', '--warmup', [CompletionResultType]::ParameterName, 'Untimed runs first')
            [CompletionResult]::new('--iters', '--iters', [CompletionResultType]::ParameterName, 'Timed runs (the median is reported)')
            [CompletionResult]::new('--device', '--device', [CompletionResultType]::ParameterName, 'Device: `cuda`, `cuda:N` or `cpu`')
            [CompletionResult]::new('--dtype', '--dtype', [CompletionResultType]::ParameterName, 'Compute dtype (default: bf16 on CUDA, f32 on CPU)')
            [CompletionResult]::new('--load', '--load', [CompletionResultType]::ParameterName, 'Also time loading a transformer folder (config.json + safetensors) onto the device')
            [CompletionResult]::new('--weights', '--weights', [CompletionResultType]::ParameterName, 'Weight format of the transformer''s blocks (and, for fp8, the language model''s layers): `stored` (the dtype; also `bf16`), `fp8` (e4m3, per-row scales, quantized as the random weights are made), `q8_0` or `q4_k` (GGML blocks, random but valid; with `--psnr` quantized on the host from the seeded random weights instead)')
            [CompletionResult]::new('--offload-prefetch', '--offload-prefetch', [CompletionResultType]::ParameterName, 'Blocks copied ahead with offload')
            [CompletionResult]::new('--configs', '--configs', [CompletionResultType]::ParameterName, 'Transformer configurations timed one after the other in this run, comma-separated `WEIGHTS[+offload]` (WEIGHTS: bf16, fp8, q8_0, q4_k), e.g. `bf16,fp8,q8_0,q4_k,bf16+offload,q4_k+offload`. Each is built, timed (peak GPU memory, seconds per forward) and dropped before the next; replaces `--weights`/`--offload` for the transformer')
            [CompletionResult]::new('--max-gpu-memory', '--max-gpu-memory', [CompletionResultType]::ParameterName, 'Run under a self-imposed GPU memory cap (`24G`, `48GB`, `20GiB`): a ballast buffer takes the rest of the free memory first, so anything over the cap fails with out of memory')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON on stdout')
            [CompletionResult]::new('--offload', '--offload', [CompletionResultType]::ParameterName, 'Stream the transformer''s blocks from host memory (as `--memory offload`); also reports the host-to-device GB/s and the overlap against `--offload-prefetch 0`')
            [CompletionResult]::new('--psnr', '--psnr', [CompletionResultType]::ParameterName, 'With the transformer: also run 4 Euler steps from the same noise with `--weights` and with the stored dtype (same random weights, seeded) and report the PSNR of the final latents')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'qwen-edit;completions' {
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors on stderr: no progress bars, no summary lines')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'qwen-edit;help' {
            [CompletionResult]::new('edit', 'edit', [CompletionResultType]::ParameterValue, 'Edit one to three images following a text instruction')
            [CompletionResult]::new('doctor', 'doctor', [CompletionResultType]::ParameterValue, 'Check whether this machine can run qwen-edit: CUDA, GPUs, memory, disk, cached models')
            [CompletionResult]::new('fetch-models', 'fetch-models', [CompletionResultType]::ParameterValue, 'Download model weights from the Hugging Face Hub into the standard hub cache')
            [CompletionResult]::new('batch', 'batch', [CompletionResultType]::ParameterValue, 'Run many edits with one loaded model: JSON lines in, one JSON result line per job out')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Serve edits: a RunPod serverless worker, a local HTTP API, or one test job')
            [CompletionResult]::new('bench', 'bench', [CompletionResultType]::ParameterValue, 'Time the full-size networks with random weights on a device (for comparing hardware)')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script to stdout')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'qwen-edit;help;edit' {
            break
        }
        'qwen-edit;help;doctor' {
            break
        }
        'qwen-edit;help;fetch-models' {
            break
        }
        'qwen-edit;help;batch' {
            break
        }
        'qwen-edit;help;serve' {
            break
        }
        'qwen-edit;help;bench' {
            break
        }
        'qwen-edit;help;completions' {
            break
        }
        'qwen-edit;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
