# Sourced by aws-setup.sh and gcp-setup.sh: OPERATOR_CIDR, the one network SSH is opened to. Default: this
# machine's public address /32; an all-addresses CIDR or a value that is not a CIDR stops the script (exit 2)
# before any cloud call.
OPERATOR_CIDR=${OPERATOR_CIDR:-$(curl -fsS https://checkip.amazonaws.com | tr -d '[:space:]')/32}
case "$OPERATOR_CIDR" in
  0.0.0.0/0 | ::/0) echo "OPERATOR_CIDR=$OPERATOR_CIDR opens SSH to the world; give your own network" >&2; exit 2 ;;
  */*) ;;
  *) echo "OPERATOR_CIDR=$OPERATOR_CIDR is not a CIDR (e.g. 203.0.113.7/32)" >&2; exit 2 ;;
esac
