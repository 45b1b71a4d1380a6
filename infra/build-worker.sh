#!/usr/bin/env bash
# Build the worker image (infra/worker.Dockerfile) for the stack's architecture and push it to ECR.
#
#   infra/build-worker.sh 123456789012.dkr.ecr.eu-west-1.amazonaws.com/jetmail-worker:0.1.0 [x86_64|arm64]
#
# Why this script and not `sam build`: `sam build` builds container images only for Lambda functions
# (PackageType: Image); the worker is an ECS Fargate task, which SAM does not build or push. The image
# installs exactly what uv.lock pins (infra/worker-requirements.txt, --require-hashes). Needs Docker with
# buildx and the AWS CLI; creates the ECR repository when it is missing. `make deploy` (infra/deploy.py) runs it
# when the image's sources changed and deploys the stack with the printed URI as its WorkerImage parameter.
set -euo pipefail

image="${1:?usage: infra/build-worker.sh <account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag> [x86_64|arm64]}"
arch="${2:-x86_64}"
case "$arch" in
  x86_64) platform=linux/amd64 ;;
  arm64) platform=linux/arm64 ;;
  *) echo "architecture must be x86_64 or arm64 (the stack's Architecture parameter)" >&2; exit 2 ;;
esac
registry="${image%%/*}"
repo_tag="${image#*/}"
repository="${repo_tag%%[:@]*}"
region="$(cut -d. -f4 <<<"$registry")"
root="$(cd "$(dirname "$0")/.." && pwd)"

aws ecr describe-repositories --region "$region" --repository-names "$repository" >/dev/null 2>&1 \
  || aws ecr create-repository --region "$region" --repository-name "$repository" \
       --image-scanning-configuration scanOnPush=true --image-tag-mutability IMMUTABLE >/dev/null
aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"
docker buildx build --platform "$platform" -f "$root/infra/worker.Dockerfile" -t "$image" --push "$root"
echo "$image"
