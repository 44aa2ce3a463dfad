# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_qwen_edit_global_optspecs
    string join \n v/verbose q/quiet color= h/help V/version
end

function __fish_qwen_edit_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_qwen_edit_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_qwen_edit_using_subcommand
    set -l cmd (__fish_qwen_edit_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -l color -d 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal' -r -f -a "auto\t''
always\t''
never\t''"
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -s v -l verbose -d 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -s q -l quiet -d 'Only errors on stderr: no progress bars, no summary lines'
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -s V -l version -d 'Print version'
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -f -a "edit" -d 'Edit one to three images following a text instruction'
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -f -a "doctor" -d 'Check whether this machine can run qwen-edit: CUDA, GPUs, memory, disk, cached models'
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -f -a "fetch-models" -d 'Download model weights from the Hugging Face Hub into the standard hub cache'
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -f -a "batch" -d 'Run many edits with one loaded model: JSON lines in, one JSON result line per job out'
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -f -a "serve" -d 'Serve edits: a RunPod serverless worker, a local HTTP API, or one test job'
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -f -a "bench" -d 'Time the full-size networks with random weights on a device (for comparing hardware)'
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c qwen-edit -n "__fish_qwen_edit_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -s p -l prompt -d 'The edit instruction' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l prompt-file -d 'Read the edit instruction from a file (`-` for stdin)' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -s n -l negative-prompt -d 'What the image should not look like (enables true CFG with --true-cfg-scale > 1). Default " "' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l steps -d 'Denoising steps (default: 50 for Qwen-Image-Edit, 40 for 2509/2511)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l true-cfg-scale -d 'True classifier-free guidance scale; 1 disables CFG (one transformer pass per step). Default 4' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l seed -d 'Random seed; the same seed gives the same initial noise as diffusers with torch.Generator("cpu").manual_seed(SEED). Default: a random seed, reported' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l width -d 'Output width in pixels (floored to a multiple of 16). Default: from the input image' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l height -d 'Output height in pixels (floored to a multiple of 16). Default: from the input image' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l ref-size -d 'Resize the reference images to about PX×PX pixels (aspect kept) before encoding them (default 1024, as the reference pipelines). Smaller is faster and keeps less of their detail' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l model -d 'Hub repo id (or `edit`, `2509`, `2511`) or a local folder in the diffusers layout' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l revision -d 'Hub revision (branch, tag or commit) of the model' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l cache-dir -d 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l device -d 'Device to run on: `cuda`, `cuda:N` or `cpu` (CPU is only practical for tiny test models)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l dtype -d 'Compute dtype (default: bf16 on CUDA, f32 on CPU)' -r -f -a "bf16\t''
f32\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l lora -d 'Merge a LoRA into the transformer (repeatable): a .safetensors file, or a hub repo `ORG/NAME` (its only .safetensors file) or `ORG/NAME:PATH/IN/REPO.safetensors`; `@SCALE` multiplies the update (default 1). Reads diffusers/PEFT, kohya, lightx2v and DiffSynth keys' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l lightning -d 'Few-step Lightning preset: merges the lightx2v Qwen-Image-Lightning LoRA for the loaded model (Edit, 2509 or 2511) and STEPS steps, uses its scheduler (static shift 3, no terminal stretch) and turns CFG off; --steps / --true-cfg-scale still override' -r -f -a "4\t''
8\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l lightning-lora -d 'The Lightning LoRA to use instead of lightx2v\'s file for the model (a path or `ORG/NAME[:FILE]`, e.g. an fp32 variant or a local copy)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l memory -d 'Which components stay on the GPU: `high` keeps all (fastest for many jobs), `low` holds one large component at a time (text encoder, then transformer; each job reloads them), `offload` keeps the transformer\'s blocks in host memory and streams them to the GPU as it runs (24 GB cards; needs host RAM for the transformer), `auto` picks `high` when everything fits in the free GPU memory, else `low` when the transformer fits alone, else `offload`' -r -f -a "auto\t''
high\t''
low\t''
offload\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l offload-prefetch -d 'With `--memory offload`: transformer blocks copied to the GPU ahead of the one computing, on a second CUDA stream (0: copy, then compute, no overlap). Each costs one block of GPU memory (0.68 GB in bf16, 0.34 GB in fp8)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l weights -d 'Weight format on the GPU: `stored` as in the files, `fp8` quantizes the transformer\'s and the language model\'s Linear weights to float8 e4m3 (per-row scales) at load, halving their memory' -r -f -a "stored\t''
fp8\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l transformer-file -d 'Transformer weights from one file instead of the model folder: a `.safetensors` (bf16, or ComfyUI "scaled fp8": e4m3 weights with `scale_weight`/`weight_scale`) or a `.gguf` (Q8_0, Q6_K, Q5_K, Q4_K, …). The config still comes from the model folder' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -s o -l output -d 'Output file, or `-` for the encoded image on stdout. Default: `<first input>-edited.png`' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l format -d 'Output format (default: from the output file\'s extension, else png)' -r -f -a "png\t''
jpeg\t''
webp\t''
tiff\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l bit-depth -d 'Bits per channel: 16 for lossless downstream work (PNG and TIFF only)' -r -f -a "8\t''
16\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l color -d 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal' -r -f -a "auto\t''
always\t''
never\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l offline -d 'Never touch the network: use only what is in the hub cache (also HF_HUB_OFFLINE=1)'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l no-lora-strict -d 'Merge what matches and skip (with a warning) LoRA keys that adapt nothing in the transformer. By default such keys, text-encoder keys included, are an error naming them'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l overwrite -d 'Replace the output file if it exists'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l mkdir -d 'Create missing parent folders of the output file'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l vae-tiling -d 'Decode/encode the VAE in tiles (256 px tiles, 192 px stride): less memory for large images'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -l json -d 'Print a JSON summary on stdout (outputs, seed, sizes, steps, model, timings)'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -s v -l verbose -d 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -s q -l quiet -d 'Only errors on stderr: no progress bars, no summary lines'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand edit" -s V -l version -d 'Print version'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand doctor" -l cache-dir -d 'Hub cache folder to inspect (default: the standard hub cache)' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand doctor" -l color -d 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal' -r -f -a "auto\t''
always\t''
never\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand doctor" -l json -d 'Print the report as JSON on stdout'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand doctor" -s v -l verbose -d 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand doctor" -s q -l quiet -d 'Only errors on stderr: no progress bars, no summary lines'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand doctor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand doctor" -s V -l version -d 'Print version'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -l model -d 'Hub repo id, or a shorthand: `edit`, `2509`, `2511`' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -l revision -d 'Hub revision (branch, tag or commit)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -l token -d 'Hub token for gated or private repos' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -l cache-dir -d 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -l jobs -d 'Files downloaded at once' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -l lightning -d 'Also fetch the Lightning LoRAs of the model (`4`, `8`, or both when no value is given)' -r -f -a "4\t''
8\t''
all\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -l color -d 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal' -r -f -a "auto\t''
always\t''
never\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -l dry-run -d 'List the files and the total size, download nothing'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -l offline -d 'Don\'t touch the network: report whether the cache already holds a complete snapshot (exit 0) or not (exit 4). Also HF_HUB_OFFLINE=1'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -l json -d 'Print a JSON summary on stdout'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -s v -l verbose -d 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -s q -l quiet -d 'Only errors on stderr: no progress bars, no summary lines'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand fetch-models" -s V -l version -d 'Print version'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l model -d 'Hub repo id (or `edit`, `2509`, `2511`) or a local folder in the diffusers layout' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l revision -d 'Hub revision (branch, tag or commit) of the model' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l cache-dir -d 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l device -d 'Device to run on: `cuda`, `cuda:N` or `cpu` (CPU is only practical for tiny test models)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l dtype -d 'Compute dtype (default: bf16 on CUDA, f32 on CPU)' -r -f -a "bf16\t''
f32\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l lora -d 'Merge a LoRA into the transformer (repeatable): a .safetensors file, or a hub repo `ORG/NAME` (its only .safetensors file) or `ORG/NAME:PATH/IN/REPO.safetensors`; `@SCALE` multiplies the update (default 1). Reads diffusers/PEFT, kohya, lightx2v and DiffSynth keys' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l lightning -d 'Few-step Lightning preset: merges the lightx2v Qwen-Image-Lightning LoRA for the loaded model (Edit, 2509 or 2511) and STEPS steps, uses its scheduler (static shift 3, no terminal stretch) and turns CFG off; --steps / --true-cfg-scale still override' -r -f -a "4\t''
8\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l lightning-lora -d 'The Lightning LoRA to use instead of lightx2v\'s file for the model (a path or `ORG/NAME[:FILE]`, e.g. an fp32 variant or a local copy)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l memory -d 'Which components stay on the GPU: `high` keeps all (fastest for many jobs), `low` holds one large component at a time (text encoder, then transformer; each job reloads them), `offload` keeps the transformer\'s blocks in host memory and streams them to the GPU as it runs (24 GB cards; needs host RAM for the transformer), `auto` picks `high` when everything fits in the free GPU memory, else `low` when the transformer fits alone, else `offload`' -r -f -a "auto\t''
high\t''
low\t''
offload\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l offload-prefetch -d 'With `--memory offload`: transformer blocks copied to the GPU ahead of the one computing, on a second CUDA stream (0: copy, then compute, no overlap). Each costs one block of GPU memory (0.68 GB in bf16, 0.34 GB in fp8)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l weights -d 'Weight format on the GPU: `stored` as in the files, `fp8` quantizes the transformer\'s and the language model\'s Linear weights to float8 e4m3 (per-row scales) at load, halving their memory' -r -f -a "stored\t''
fp8\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l transformer-file -d 'Transformer weights from one file instead of the model folder: a `.safetensors` (bf16, or ComfyUI "scaled fp8": e4m3 weights with `scale_weight`/`weight_scale`) or a `.gguf` (Q8_0, Q6_K, Q5_K, Q4_K, …). The config still comes from the model folder' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l output-dir -d 'Folder for jobs without an `output` path (named `<line index>.png`)' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l color -d 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal' -r -f -a "auto\t''
always\t''
never\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l offline -d 'Never touch the network: use only what is in the hub cache (also HF_HUB_OFFLINE=1)'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l no-lora-strict -d 'Merge what matches and skip (with a warning) LoRA keys that adapt nothing in the transformer. By default such keys, text-encoder keys included, are an error naming them'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l overwrite -d 'Replace existing output files'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l mkdir -d 'Create missing output folders'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -l vae-tiling -d 'Tiled VAE encode/decode'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -s v -l verbose -d 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -s q -l quiet -d 'Only errors on stderr: no progress bars, no summary lines'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand batch" -s V -l version -d 'Print version'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l model -d 'Hub repo id (or `edit`, `2509`, `2511`) or a local folder in the diffusers layout' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l revision -d 'Hub revision (branch, tag or commit) of the model' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l cache-dir -d 'Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l device -d 'Device to run on: `cuda`, `cuda:N` or `cpu` (CPU is only practical for tiny test models)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l dtype -d 'Compute dtype (default: bf16 on CUDA, f32 on CPU)' -r -f -a "bf16\t''
f32\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l lora -d 'Merge a LoRA into the transformer (repeatable): a .safetensors file, or a hub repo `ORG/NAME` (its only .safetensors file) or `ORG/NAME:PATH/IN/REPO.safetensors`; `@SCALE` multiplies the update (default 1). Reads diffusers/PEFT, kohya, lightx2v and DiffSynth keys' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l lightning -d 'Few-step Lightning preset: merges the lightx2v Qwen-Image-Lightning LoRA for the loaded model (Edit, 2509 or 2511) and STEPS steps, uses its scheduler (static shift 3, no terminal stretch) and turns CFG off; --steps / --true-cfg-scale still override' -r -f -a "4\t''
8\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l lightning-lora -d 'The Lightning LoRA to use instead of lightx2v\'s file for the model (a path or `ORG/NAME[:FILE]`, e.g. an fp32 variant or a local copy)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l memory -d 'Which components stay on the GPU: `high` keeps all (fastest for many jobs), `low` holds one large component at a time (text encoder, then transformer; each job reloads them), `offload` keeps the transformer\'s blocks in host memory and streams them to the GPU as it runs (24 GB cards; needs host RAM for the transformer), `auto` picks `high` when everything fits in the free GPU memory, else `low` when the transformer fits alone, else `offload`' -r -f -a "auto\t''
high\t''
low\t''
offload\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l offload-prefetch -d 'With `--memory offload`: transformer blocks copied to the GPU ahead of the one computing, on a second CUDA stream (0: copy, then compute, no overlap). Each costs one block of GPU memory (0.68 GB in bf16, 0.34 GB in fp8)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l weights -d 'Weight format on the GPU: `stored` as in the files, `fp8` quantizes the transformer\'s and the language model\'s Linear weights to float8 e4m3 (per-row scales) at load, halving their memory' -r -f -a "stored\t''
fp8\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l transformer-file -d 'Transformer weights from one file instead of the model folder: a `.safetensors` (bf16, or ComfyUI "scaled fp8": e4m3 weights with `scale_weight`/`weight_scale`) or a `.gguf` (Q8_0, Q6_K, Q5_K, Q4_K, …). The config still comes from the model folder' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l test-input -d 'Run one job and print its result as JSON on stdout: a file, or the JSON text itself, in RunPod\'s request shape `{"input": {...}}`' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l http -d 'Serve a local HTTP API on ADDR (e.g. 127.0.0.1:8000): POST /runsync, POST /run, GET /status/ID, GET /health, also under /v2/ENDPOINT/' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l api-key -d 'Require this key in the `Authorization` header (raw or `Bearer KEY`) of --http requests' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l allow-path -d 'Allow jobs to read local image files below DIR (repeatable). None by default: paths are refused' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l max-image-mb -d 'Largest input image (file, download or decoded base64), in MiB' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l max-request-mb -d 'Largest job or HTTP request body, in MiB' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l fetch-timeout -d 'Time allowed for downloading one image URL, in seconds' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l progress-interval -d 'Post an IN_PROGRESS update (step and steps) at most every SECS seconds while a job runs (RunPod worker mode; 0: never)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l poll-timeout -d 'How long one job request (a long poll) may wait for an answer, in seconds' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l post-timeout -d 'Time allowed for posting one result or progress update, in seconds' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l post-tries -d 'Attempts at posting a result before it is given up (and logged as lost)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l backoff-ms -d 'Wait after a "no job" answer and before the first retry of a failed request; doubled on each further failure, up to 60 s' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l queue-size -d 'Jobs an --http server queues before it answers 429' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l color -d 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal' -r -f -a "auto\t''
always\t''
never\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l offline -d 'Never touch the network: use only what is in the hub cache (also HF_HUB_OFFLINE=1)'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l no-lora-strict -d 'Merge what matches and skip (with a warning) LoRA keys that adapt nothing in the transformer. By default such keys, text-encoder keys included, are an error naming them'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l no-warmup -d 'Skip the warm-up edit at startup'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -l vae-tiling -d 'Tiled VAE encode/decode'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -s v -l verbose -d 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -s q -l quiet -d 'Only errors on stderr: no progress bars, no summary lines'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand serve" -s V -l version -d 'Print version'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l component -d 'Components to time (repeatable; default: all three, or none when `--load` is given)' -r -f -a "transformer\t''
vae\t''
text-encoder\t''
all\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l size -d 'Square image sizes in pixels' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l refs -d 'Reference image counts for the transformer' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l txt-len -d 'Text tokens for the transformer' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l warmup -d 'Untimed runs first' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l iters -d 'Timed runs (the median is reported)' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l device -d 'Device: `cuda`, `cuda:N` or `cpu`' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l dtype -d 'Compute dtype (default: bf16 on CUDA, f32 on CPU)' -r -f -a "bf16\t''
f32\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l load -d 'Also time loading a transformer folder (config.json + safetensors) onto the device' -r -F
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l weights -d 'Weight format of the transformer\'s blocks (and, for fp8, the language model\'s layers): `stored` (the dtype; also `bf16`), `fp8` (e4m3, per-row scales, quantized as the random weights are made), `q8_0` or `q4_k` (GGML blocks, random but valid; with `--psnr` quantized on the host from the seeded random weights instead)' -r -f -a "stored\t'The compute dtype'
fp8\t''
q8_0\t''
q4_k\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l offload-prefetch -d 'Blocks copied ahead with offload' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l configs -d 'Transformer configurations timed one after the other in this run, comma-separated `WEIGHTS[+offload]` (WEIGHTS: bf16, fp8, q8_0, q4_k), e.g. `bf16,fp8,q8_0,q4_k,bf16+offload,q4_k+offload`. Each is built, timed (peak GPU memory, seconds per forward) and dropped before the next; replaces `--weights`/`--offload` for the transformer' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l max-gpu-memory -d 'Run under a self-imposed GPU memory cap (`24G`, `48GB`, `20GiB`): a ballast buffer takes the rest of the free memory first, so anything over the cap fails with out of memory' -r
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l color -d 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal' -r -f -a "auto\t''
always\t''
never\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l json -d 'Print JSON on stdout'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l offload -d 'Stream the transformer\'s blocks from host memory (as `--memory offload`); also reports the host-to-device GB/s and the overlap against `--offload-prefetch 0`'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -l psnr -d 'With the transformer: also run 4 Euler steps from the same noise with `--weights` and with the stored dtype (same random weights, seeded) and report the PSNR of the final latents'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -s v -l verbose -d 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -s q -l quiet -d 'Only errors on stderr: no progress bars, no summary lines'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand bench" -s V -l version -d 'Print version'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand completions" -l color -d 'When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal' -r -f -a "auto\t''
always\t''
never\t''"
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand completions" -s v -l verbose -d 'More log output on stderr (-v: debug, -vv: trace). Hides progress bars'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand completions" -s q -l quiet -d 'Only errors on stderr: no progress bars, no summary lines'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand completions" -s h -l help -d 'Print help'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand completions" -s V -l version -d 'Print version'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand help; and not __fish_seen_subcommand_from edit doctor fetch-models batch serve bench completions help" -f -a "edit" -d 'Edit one to three images following a text instruction'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand help; and not __fish_seen_subcommand_from edit doctor fetch-models batch serve bench completions help" -f -a "doctor" -d 'Check whether this machine can run qwen-edit: CUDA, GPUs, memory, disk, cached models'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand help; and not __fish_seen_subcommand_from edit doctor fetch-models batch serve bench completions help" -f -a "fetch-models" -d 'Download model weights from the Hugging Face Hub into the standard hub cache'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand help; and not __fish_seen_subcommand_from edit doctor fetch-models batch serve bench completions help" -f -a "batch" -d 'Run many edits with one loaded model: JSON lines in, one JSON result line per job out'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand help; and not __fish_seen_subcommand_from edit doctor fetch-models batch serve bench completions help" -f -a "serve" -d 'Serve edits: a RunPod serverless worker, a local HTTP API, or one test job'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand help; and not __fish_seen_subcommand_from edit doctor fetch-models batch serve bench completions help" -f -a "bench" -d 'Time the full-size networks with random weights on a device (for comparing hardware)'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand help; and not __fish_seen_subcommand_from edit doctor fetch-models batch serve bench completions help" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c qwen-edit -n "__fish_qwen_edit_using_subcommand help; and not __fish_seen_subcommand_from edit doctor fetch-models batch serve bench completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
