#!/usr/bin/env bash
# One-time AWS setup for cluster.yaml (docs/cluster.md, "Permissions and network"): the head's and the
# workers' IAM roles and instance profiles, and a security group that lets SSH in from the operator's
# network only. Idempotent: what exists already is left as it is (policies are rewritten).
#
#   BUCKET=my-bucket REGION=us-west-2 OPERATOR_CIDR=203.0.113.7/32 bash cluster-setup/aws-setup.sh
#
# BUCKET         the S3 bucket of storage.path and the MLflow artifacts (must exist: aws s3 mb s3://...)
# REGION         the region of cluster.yaml's provider.region
# OPERATOR_CIDR  the network `ray up`, `ray attach` and the SSH tunnels come from (default: this machine's
#                public address /32, asked of checkip.amazonaws.com); never 0.0.0.0/0
# VPC_ID         optional: the VPC of the nodes (default: the region's default VPC)
#
# Prints the values to put into cluster.yaml: the account id (YOUR-ACCOUNT-ID) and the security group id
# (YOUR-SECURITY-GROUP-ID). Needs the AWS CLI v2 and credentials allowed to manage IAM and EC2.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${BUCKET:?set BUCKET (the S3 bucket name, without s3://)}"
: "${REGION:?set REGION (cluster.yaml provider.region)}"
. "$here/operator-cidr.sh"
ACCOUNT_ID=$(aws sts get-caller-identity --query Account --output text)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in aws-head-policy.json aws-worker-policy.json; do
  sed -e "s/YOUR-ACCOUNT-ID/$ACCOUNT_ID/g" -e "s/YOUR-BUCKET/$BUCKET/g" "$here/$f" > "$tmp/$f"
done

for who in head worker; do
  role=mcel-$who
  aws iam get-role --role-name "$role" > /dev/null 2>&1 ||
    aws iam create-role --role-name "$role" --assume-role-policy-document "file://$here/aws-ec2-trust.json" > /dev/null
  aws iam put-role-policy --role-name "$role" --policy-name "$role" --policy-document "file://$tmp/aws-$who-policy.json"
  aws iam get-instance-profile --instance-profile-name "$role" > /dev/null 2>&1 || {
    aws iam create-instance-profile --instance-profile-name "$role" > /dev/null
    aws iam add-role-to-instance-profile --instance-profile-name "$role" --role-name "$role"
  }
done

VPC_ID=${VPC_ID:-$(aws ec2 describe-vpcs --region "$REGION" --filters Name=is-default,Values=true \
  --query 'Vpcs[0].VpcId' --output text)}
SG_ID=$(aws ec2 describe-security-groups --region "$REGION" \
  --filters Name=group-name,Values=mcel-cluster Name=vpc-id,Values="$VPC_ID" \
  --query 'SecurityGroups[0].GroupId' --output text)
if [ "$SG_ID" = "None" ]; then
  SG_ID=$(aws ec2 create-security-group --region "$REGION" --vpc-id "$VPC_ID" --group-name mcel-cluster \
    --description "mcel-search Ray cluster: SSH from the operator, all traffic inside the group" \
    --query GroupId --output text)
  # the nodes talk to each other on every port (Ray's GCS, object store, MLflow on the head)
  aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG_ID" \
    --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$SG_ID}]" > /dev/null
fi
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG_ID" \
  --protocol tcp --port 22 --cidr "$OPERATOR_CIDR" > /dev/null 2>&1 || true   # already there: fine

echo "YOUR-ACCOUNT-ID         -> $ACCOUNT_ID"
echo "YOUR-SECURITY-GROUP-ID  -> $SG_ID   (SSH from $OPERATOR_CIDR only)"
echo "instance profiles       -> mcel-head, mcel-worker (give your own user aws-operator-policy.json)"
