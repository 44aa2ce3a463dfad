
use builtin;
use str;

set edit:completion:arg-completer[qwen-edit] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'qwen-edit'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'qwen-edit'= {
            cand --color 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal'
            cand -v 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand --verbose 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand -q 'Only errors on stderr: no progress bars, no summary lines'
            cand --quiet 'Only errors on stderr: no progress bars, no summary lines'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand edit 'Edit one to three images following a text instruction'
            cand doctor 'Check whether this machine can run qwen-edit: CUDA, GPUs, memory, disk, cached models'
            cand fetch-models 'Download model weights from the Hugging Face Hub into the standard hub cache'
            cand batch 'Run many edits with one loaded model: JSON lines in, one JSON result line per job out'
            cand serve 'Serve edits: a RunPod serverless worker, a local HTTP API, or one test job'
            cand bench 'Time the full-size networks with random weights on a device (for comparing hardware)'
            cand completions 'Print a shell completion script to stdout'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'qwen-edit;edit'= {
            cand -p 'The edit instruction'
            cand --prompt 'The edit instruction'
            cand --prompt-file 'Read the edit instruction from a file (`-` for stdin)'
            cand -n 'What the image should not look like (enables true CFG with --true-cfg-scale > 1). Default " "'
            cand --negative-prompt 'What the image should not look like (enables true CFG with --true-cfg-scale > 1). Default " "'
            cand --steps 'Denoising steps (default: 50 for Qwen-Image-Edit, 40 for 2509/2511)'
            cand --true-cfg-scale 'True classifier-free guidance scale; 1 disables CFG (one transformer pass per step). Default 4'
            cand --seed 'Random seed; the same seed gives the same initial noise as diffusers with torch.Generator("cpu").manual_seed(SEED). Default: a random seed, reported'
            cand --width 'Output width in pixels (floored to a multiple of 16). Default: from the input image'
            cand --height 'Output height in pixels (floored to a multiple of 16). Default: from the input image'
            cand --ref-size 'Resize the reference images to about PX×PX pixels (aspect kept) before encoding them (default 1024, as the reference pipelines). Smaller is faster and keeps less of their detail'
            cand --model 'Hub repo id (or `edit`, `2509`, `2511`) or a local folder in the diffusers layout'
            cand --revision 'Hub revision (branch, tag or commit) of the model'
            cand --cache-dir 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)'
            cand --device 'Device to run on: `cuda`, `cuda:N` or `cpu` (CPU is only practical for tiny test models)'
            cand --dtype 'Compute dtype (default: bf16 on CUDA, f32 on CPU)'
            cand --lora 'Merge a LoRA into the transformer (repeatable): a .safetensors file, or a hub repo `ORG/NAME` (its only .safetensors file) or `ORG/NAME:PATH/IN/REPO.safetensors`; `@SCALE` multiplies the update (default 1). Reads diffusers/PEFT, kohya, lightx2v and DiffSynth keys'
            cand --lightning 'Few-step Lightning preset: merges the lightx2v Qwen-Image-Lightning LoRA for the loaded model (Edit, 2509 or 2511) and STEPS steps, uses its scheduler (static shift 3, no terminal stretch) and turns CFG off; --steps / --true-cfg-scale still override'
            cand --lightning-lora 'The Lightning LoRA to use instead of lightx2v''s file for the model (a path or `ORG/NAME[:FILE]`, e.g. an fp32 variant or a local copy)'
            cand --memory 'Which components stay on the GPU: `high` keeps all (fastest for many jobs), `low` holds one large component at a time (text encoder, then transformer; each job reloads them), `offload` keeps the transformer''s blocks in host memory and streams them to the GPU as it runs (24 GB cards; needs host RAM for the transformer), `auto` picks `high` when everything fits in the free GPU memory, else `low` when the transformer fits alone, else `offload`'
            cand --offload-prefetch 'With `--memory offload`: transformer blocks copied to the GPU ahead of the one computing, on a second CUDA stream (0: copy, then compute, no overlap). Each costs one block of GPU memory (0.68 GB in bf16, 0.34 GB in fp8)'
            cand --weights 'Weight format on the GPU: `stored` as in the files, `fp8` quantizes the transformer''s and the language model''s Linear weights to float8 e4m3 (per-row scales) at load, halving their memory'
            cand --transformer-file 'Transformer weights from one file instead of the model folder: a `.safetensors` (bf16, or ComfyUI "scaled fp8": e4m3 weights with `scale_weight`/`weight_scale`) or a `.gguf` (Q8_0, Q6_K, Q5_K, Q4_K, …). The config still comes from the model folder'
            cand -o 'Output file, or `-` for the encoded image on stdout. Default: `<first input>-edited.png`'
            cand --output 'Output file, or `-` for the encoded image on stdout. Default: `<first input>-edited.png`'
            cand --format 'Output format (default: from the output file''s extension, else png)'
            cand --bit-depth 'Bits per channel: 16 for lossless downstream work (PNG and TIFF only)'
            cand --color 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal'
            cand --offline 'Never touch the network: use only what is in the hub cache (also HF_HUB_OFFLINE=1)'
            cand --no-lora-strict 'Merge what matches and skip (with a warning) LoRA keys that adapt nothing in the transformer. By default such keys, text-encoder keys included, are an error naming them'
            cand --overwrite 'Replace the output file if it exists'
            cand --mkdir 'Create missing parent folders of the output file'
            cand --vae-tiling 'Decode/encode the VAE in tiles (256 px tiles, 192 px stride): less memory for large images'
            cand --json 'Print a JSON summary on stdout (outputs, seed, sizes, steps, model, timings)'
            cand -v 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand --verbose 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand -q 'Only errors on stderr: no progress bars, no summary lines'
            cand --quiet 'Only errors on stderr: no progress bars, no summary lines'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'qwen-edit;doctor'= {
            cand --cache-dir 'Hub cache folder to inspect (default: the standard hub cache)'
            cand --color 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal'
            cand --json 'Print the report as JSON on stdout'
            cand -v 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand --verbose 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand -q 'Only errors on stderr: no progress bars, no summary lines'
            cand --quiet 'Only errors on stderr: no progress bars, no summary lines'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'qwen-edit;fetch-models'= {
            cand --model 'Hub repo id, or a shorthand: `edit`, `2509`, `2511`'
            cand --revision 'Hub revision (branch, tag or commit)'
            cand --token 'Hub token for gated or private repos'
            cand --cache-dir 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)'
            cand --jobs 'Files downloaded at once'
            cand --lightning 'Also fetch the Lightning LoRAs of the model (`4`, `8`, or both when no value is given)'
            cand --color 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal'
            cand --dry-run 'List the files and the total size, download nothing'
            cand --offline 'Don''t touch the network: report whether the cache already holds a complete snapshot (exit 0) or not (exit 4). Also HF_HUB_OFFLINE=1'
            cand --json 'Print a JSON summary on stdout'
            cand -v 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand --verbose 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand -q 'Only errors on stderr: no progress bars, no summary lines'
            cand --quiet 'Only errors on stderr: no progress bars, no summary lines'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'qwen-edit;batch'= {
            cand --model 'Hub repo id (or `edit`, `2509`, `2511`) or a local folder in the diffusers layout'
            cand --revision 'Hub revision (branch, tag or commit) of the model'
            cand --cache-dir 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)'
            cand --device 'Device to run on: `cuda`, `cuda:N` or `cpu` (CPU is only practical for tiny test models)'
            cand --dtype 'Compute dtype (default: bf16 on CUDA, f32 on CPU)'
            cand --lora 'Merge a LoRA into the transformer (repeatable): a .safetensors file, or a hub repo `ORG/NAME` (its only .safetensors file) or `ORG/NAME:PATH/IN/REPO.safetensors`; `@SCALE` multiplies the update (default 1). Reads diffusers/PEFT, kohya, lightx2v and DiffSynth keys'
            cand --lightning 'Few-step Lightning preset: merges the lightx2v Qwen-Image-Lightning LoRA for the loaded model (Edit, 2509 or 2511) and STEPS steps, uses its scheduler (static shift 3, no terminal stretch) and turns CFG off; --steps / --true-cfg-scale still override'
            cand --lightning-lora 'The Lightning LoRA to use instead of lightx2v''s file for the model (a path or `ORG/NAME[:FILE]`, e.g. an fp32 variant or a local copy)'
            cand --memory 'Which components stay on the GPU: `high` keeps all (fastest for many jobs), `low` holds one large component at a time (text encoder, then transformer; each job reloads them), `offload` keeps the transformer''s blocks in host memory and streams them to the GPU as it runs (24 GB cards; needs host RAM for the transformer), `auto` picks `high` when everything fits in the free GPU memory, else `low` when the transformer fits alone, else `offload`'
            cand --offload-prefetch 'With `--memory offload`: transformer blocks copied to the GPU ahead of the one computing, on a second CUDA stream (0: copy, then compute, no overlap). Each costs one block of GPU memory (0.68 GB in bf16, 0.34 GB in fp8)'
            cand --weights 'Weight format on the GPU: `stored` as in the files, `fp8` quantizes the transformer''s and the language model''s Linear weights to float8 e4m3 (per-row scales) at load, halving their memory'
            cand --transformer-file 'Transformer weights from one file instead of the model folder: a `.safetensors` (bf16, or ComfyUI "scaled fp8": e4m3 weights with `scale_weight`/`weight_scale`) or a `.gguf` (Q8_0, Q6_K, Q5_K, Q4_K, …). The config still comes from the model folder'
            cand --output-dir 'Folder for jobs without an `output` path (named `<line index>.png`)'
            cand --color 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal'
            cand --offline 'Never touch the network: use only what is in the hub cache (also HF_HUB_OFFLINE=1)'
            cand --no-lora-strict 'Merge what matches and skip (with a warning) LoRA keys that adapt nothing in the transformer. By default such keys, text-encoder keys included, are an error naming them'
            cand --overwrite 'Replace existing output files'
            cand --mkdir 'Create missing output folders'
            cand --vae-tiling 'Tiled VAE encode/decode'
            cand -v 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand --verbose 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand -q 'Only errors on stderr: no progress bars, no summary lines'
            cand --quiet 'Only errors on stderr: no progress bars, no summary lines'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'qwen-edit;serve'= {
            cand --model 'Hub repo id (or `edit`, `2509`, `2511`) or a local folder in the diffusers layout'
            cand --revision 'Hub revision (branch, tag or commit) of the model'
            cand --cache-dir 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)'
            cand --device 'Device to run on: `cuda`, `cuda:N` or `cpu` (CPU is only practical for tiny test models)'
            cand --dtype 'Compute dtype (default: bf16 on CUDA, f32 on CPU)'
            cand --lora 'Merge a LoRA into the transformer (repeatable): a .safetensors file, or a hub repo `ORG/NAME` (its only .safetensors file) or `ORG/NAME:PATH/IN/REPO.safetensors`; `@SCALE` multiplies the update (default 1). Reads diffusers/PEFT, kohya, lightx2v and DiffSynth keys'
            cand --lightning 'Few-step Lightning preset: merges the lightx2v Qwen-Image-Lightning LoRA for the loaded model (Edit, 2509 or 2511) and STEPS steps, uses its scheduler (static shift 3, no terminal stretch) and turns CFG off; --steps / --true-cfg-scale still override'
            cand --lightning-lora 'The Lightning LoRA to use instead of lightx2v''s file for the model (a path or `ORG/NAME[:FILE]`, e.g. an fp32 variant or a local copy)'
            cand --memory 'Which components stay on the GPU: `high` keeps all (fastest for many jobs), `low` holds one large component at a time (text encoder, then transformer; each job reloads them), `offload` keeps the transformer''s blocks in host memory and streams them to the GPU as it runs (24 GB cards; needs host RAM for the transformer), `auto` picks `high` when everything fits in the free GPU memory, else `low` when the transformer fits alone, else `offload`'
            cand --offload-prefetch 'With `--memory offload`: transformer blocks copied to the GPU ahead of the one computing, on a second CUDA stream (0: copy, then compute, no overlap). Each costs one block of GPU memory (0.68 GB in bf16, 0.34 GB in fp8)'
            cand --weights 'Weight format on the GPU: `stored` as in the files, `fp8` quantizes the transformer''s and the language model''s Linear weights to float8 e4m3 (per-row scales) at load, halving their memory'
            cand --transformer-file 'Transformer weights from one file instead of the model folder: a `.safetensors` (bf16, or ComfyUI "scaled fp8": e4m3 weights with `scale_weight`/`weight_scale`) or a `.gguf` (Q8_0, Q6_K, Q5_K, Q4_K, …). The config still comes from the model folder'
            cand --test-input 'Run one job and print its result as JSON on stdout: a file, or the JSON text itself, in RunPod''s request shape `{"input": {...}}`'
            cand --http 'Serve a local HTTP API on ADDR (e.g. 127.0.0.1:8000): POST /runsync, POST /run, GET /status/ID, GET /health, also under /v2/ENDPOINT/'
            cand --api-key 'Require this key in the `Authorization` header (raw or `Bearer KEY`) of --http requests'
            cand --allow-path 'Allow jobs to read local image files below DIR (repeatable). None by default: paths are refused'
            cand --max-image-mb 'Largest input image (file, download or decoded base64), in MiB'
            cand --max-request-mb 'Largest job or HTTP request body, in MiB'
            cand --fetch-timeout 'Time allowed for downloading one image URL, in seconds'
            cand --progress-interval 'Post an IN_PROGRESS update (step and steps) at most every SECS seconds while a job runs (RunPod worker mode; 0: never)'
            cand --poll-timeout 'How long one job request (a long poll) may wait for an answer, in seconds'
            cand --post-timeout 'Time allowed for posting one result or progress update, in seconds'
            cand --post-tries 'Attempts at posting a result before it is given up (and logged as lost)'
            cand --backoff-ms 'Wait after a "no job" answer and before the first retry of a failed request; doubled on each further failure, up to 60 s'
            cand --queue-size 'Jobs an --http server queues before it answers 429'
            cand --color 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal'
            cand --offline 'Never touch the network: use only what is in the hub cache (also HF_HUB_OFFLINE=1)'
            cand --no-lora-strict 'Merge what matches and skip (with a warning) LoRA keys that adapt nothing in the transformer. By default such keys, text-encoder keys included, are an error naming them'
            cand --no-warmup 'Skip the warm-up edit at startup'
            cand --vae-tiling 'Tiled VAE encode/decode'
            cand -v 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand --verbose 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand -q 'Only errors on stderr: no progress bars, no summary lines'
            cand --quiet 'Only errors on stderr: no progress bars, no summary lines'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'qwen-edit;bench'= {
            cand --component 'Components to time (repeatable; default: all three, or none when `--load` is given)'
            cand --size 'Square image sizes in pixels'
            cand --refs 'Reference image counts for the transformer'
            cand --txt-len 'Text tokens for the transformer'
            cand --warmup 'Untimed runs first'
            cand --iters 'Timed runs (the median is reported)'
            cand --device 'Device: `cuda`, `cuda:N` or `cpu`'
            cand --dtype 'Compute dtype (default: bf16 on CUDA, f32 on CPU)'
            cand --load 'Also time loading a transformer folder (config.json + safetensors) onto the device'
            cand --weights 'Weight format of the transformer''s blocks (and, for fp8, the language model''s layers): `stored` (the dtype; also `bf16`), `fp8` (e4m3, per-row scales, quantized as the random weights are made), `q8_0` or `q4_k` (GGML blocks, random but valid; with `--psnr` quantized on the host from the seeded random weights instead)'
            cand --offload-prefetch 'Blocks copied ahead with offload'
            cand --configs 'Transformer configurations timed one after the other in this run, comma-separated `WEIGHTS[+offload]` (WEIGHTS: bf16, fp8, q8_0, q4_k), e.g. `bf16,fp8,q8_0,q4_k,bf16+offload,q4_k+offload`. Each is built, timed (peak GPU memory, seconds per forward) and dropped before the next; replaces `--weights`/`--offload` for the transformer'
            cand --max-gpu-memory 'Run under a self-imposed GPU memory cap (`24G`, `48GB`, `20GiB`): a ballast buffer takes the rest of the free memory first, so anything over the cap fails with out of memory'
            cand --color 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal'
            cand --json 'Print JSON on stdout'
            cand --offload 'Stream the transformer''s blocks from host memory (as `--memory offload`); also reports the host-to-device GB/s and the overlap against `--offload-prefetch 0`'
            cand --psnr 'With the transformer: also run 4 Euler steps from the same noise with `--weights` and with the stored dtype (same random weights, seeded) and report the PSNR of the final latents'
            cand -v 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand --verbose 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand -q 'Only errors on stderr: no progress bars, no summary lines'
            cand --quiet 'Only errors on stderr: no progress bars, no summary lines'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'qwen-edit;completions'= {
            cand --color 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal'
            cand -v 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand --verbose 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
            cand -q 'Only errors on stderr: no progress bars, no summary lines'
            cand --quiet 'Only errors on stderr: no progress bars, no summary lines'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'qwen-edit;help'= {
            cand edit 'Edit one to three images following a text instruction'
            cand doctor 'Check whether this machine can run qwen-edit: CUDA, GPUs, memory, disk, cached models'
            cand fetch-models 'Download model weights from the Hugging Face Hub into the standard hub cache'
            cand batch 'Run many edits with one loaded model: JSON lines in, one JSON result line per job out'
            cand serve 'Serve edits: a RunPod serverless worker, a local HTTP API, or one test job'
            cand bench 'Time the full-size networks with random weights on a device (for comparing hardware)'
            cand completions 'Print a shell completion script to stdout'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'qwen-edit;help;edit'= {
        }
        &'qwen-edit;help;doctor'= {
        }
        &'qwen-edit;help;fetch-models'= {
        }
        &'qwen-edit;help;batch'= {
        }
        &'qwen-edit;help;serve'= {
        }
        &'qwen-edit;help;bench'= {
        }
        &'qwen-edit;help;completions'= {
        }
        &'qwen-edit;help;help'= {
        }
    ]
    $completions[$command]
}
