#!/usr/bin/env bash
# One-time Google Cloud setup for cluster-gcp.yaml (docs/cluster.md, "Permissions and network"): the workers'
# service account with the bucket only, and a network whose firewall lets SSH in from the operator's
# network only. Idempotent: what exists already is left as it is.
#
#   PROJECT=my-project BUCKET=my-bucket REGION=us-central1 OPERATOR_CIDR=203.0.113.7/32 bash cluster-setup/gcp-setup.sh
#
# The head's account is the one `ray up` makes and binds itself on GCP (ray-autoscaler-sa-v1: compute.admin,
# storage.objectAdmin, iam.serviceAccountUser, iam.roleViewer; Ray 2.60 cannot be given another). This
# script grants it iam.serviceAccountUser on the workers' account explicitly (GCP's PassRole: attaching
# mcel-worker to the machines it launches), and gives the workers' account storage.objectAdmin on the
# bucket only. Needs gcloud, logged in as a project owner (or IAM + compute admin).
set -euo pipefail
: "${PROJECT:?set PROJECT (cluster-gcp.yaml provider.project_id)}"
: "${BUCKET:?set BUCKET (the GCS bucket name, without gs://)}"
: "${REGION:?set REGION (cluster-gcp.yaml provider.region)}"
here=$(cd "$(dirname "$0")" && pwd)
. "$here/operator-cidr.sh"
g="gcloud --project=$PROJECT --quiet"
head=ray-autoscaler-sa-v1@$PROJECT.iam.gserviceaccount.com
worker=mcel-worker@$PROJECT.iam.gserviceaccount.com

for account in ray-autoscaler-sa-v1 mcel-worker; do
  $g iam service-accounts describe "$account@$PROJECT.iam.gserviceaccount.com" > /dev/null 2>&1 ||
    $g iam service-accounts create "$account" --display-name "mcel-search Ray ($account)"
done
$g iam service-accounts add-iam-policy-binding "$worker" --member "serviceAccount:$head" \
  --role roles/iam.serviceAccountUser > /dev/null
$g storage buckets add-iam-policy-binding "gs://$BUCKET" --member "serviceAccount:$worker" \
  --role roles/storage.objectAdmin > /dev/null

$g compute networks describe mcel-net > /dev/null 2>&1 || $g compute networks create mcel-net --subnet-mode=auto
$g compute firewall-rules describe mcel-internal > /dev/null 2>&1 ||
  $g compute firewall-rules create mcel-internal --network mcel-net --allow tcp,udp,icmp --source-ranges 10.128.0.0/9
$g compute firewall-rules describe mcel-ssh > /dev/null 2>&1 ||
  $g compute firewall-rules create mcel-ssh --network mcel-net --allow tcp:22 --source-ranges "$OPERATOR_CIDR"

echo "service accounts -> $head (head), $worker (workers)"
echo "network          -> mcel-net (SSH from $OPERATOR_CIDR only; $REGION subnet auto)"
