# qwen-edit GPU image: multi-stage, CUDA 12.8 (driver >= 570), kernels for Ampere (sm_80/86),
# Ada (sm_89) and Hopper (sm_90). Build: docker build -t qwen-edit .
# Run:   docker run --gpus all -v /data/hf:/runpod-volume qwen-edit edit in.png -p "..." -o /runpod-volume/out.png
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04 AS builder
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
       python3-pip unzip \
    && rm -rf /var/lib/apt/lists/*
# The `cudnn` feature compiles a small C++ shim over NVIDIA's header-only cudnn-frontend (cuDNN's own headers
# come with this cudnn-devel image; libcudnn is dlopen'd at run time from the cudnn-runtime image).
RUN mkdir -p /opt/cudnn-frontend && cd /opt/cudnn-frontend \
    && python3 -m pip download --no-deps nvidia-cudnn-frontend==1.32.0 -d . \
    && unzip -q -o nvidia_cudnn_frontend-*.whl 'include/*' && rm -f *.whl
ENV CUDNN_FRONTEND_INCLUDE=/opt/cudnn-frontend/include CUDA_ROOT=/usr/local/cuda
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
# candle compiles its CUDA kernels for one compute capability; 80 gives PTX that the driver JITs
# forward for 8.6/8.9/9.0 (Hopper users may rebuild with CUDA_COMPUTE_CAP=90 for sm_90a kernels).
ENV CUDA_COMPUTE_CAP=80
RUN cargo build --release --locked --features cudnn && strip target/release/qwen-edit

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/qwen-edit /usr/local/bin/qwen-edit
# The hub cache lives on the volume, so weights are downloaded once (RunPod network volume).
ENV HF_HOME=/runpod-volume/huggingface
VOLUME ["/runpod-volume"]
ENTRYPOINT ["qwen-edit"]
CMD ["--help"]
