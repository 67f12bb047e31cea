#!/bin/sh
# Certificates for Dray's TLS listeners (compose.yaml's certs-init runs it; it works on any machine with openssl):
#
#   deploy/make-certs.sh DIR HOST [HOST...]
#
# DIR/ca.pem, ca.key      a CA (made once, valid 10 years): clients trust ca.pem
# DIR/broker.pem, .key    the brokers' certificate for every HOST (DNS names, and 127.0.0.1), signed by the CA
#
# Run again, it keeps what is there, and issues a new broker certificate when the hosts changed or the current one
# expires within 30 days. Brokers reload changed files by themselves (--tls-check-ms), so a periodic run rotates the
# certificate without a restart. Files are replaced whole (written aside, then renamed).
set -eu

if [ $# -lt 2 ]; then
    echo "usage: $0 DIR HOST [HOST...]" >&2
    exit 2
fi
dir=$1
shift
mkdir -p "$dir"
umask 022

if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key.tmp"
    openssl req -x509 -new -key "$dir/ca.key.tmp" -sha256 -days 3650 -subj "/O=Dray/CN=Dray CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$dir/ca.pem.tmp"
    chmod 600 "$dir/ca.key.tmp"
    mv "$dir/ca.key.tmp" "$dir/ca.key"
    mv "$dir/ca.pem.tmp" "$dir/ca.pem"
    echo "made the CA $dir/ca.pem"
fi

san="IP:127.0.0.1"
for host in "$@"; do
    san="$san,DNS:$host"
done

if [ -s "$dir/broker.pem" ] && [ -s "$dir/broker.key" ] && [ "$(cat "$dir/broker.san" 2>/dev/null)" = "$san" ] \
        && openssl x509 -in "$dir/broker.pem" -noout -checkend 2592000 >/dev/null; then
    echo "$dir/broker.pem is valid for 30 days more for $san: kept"
    exit 0
fi

openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$dir/broker.key.tmp"
openssl req -new -key "$dir/broker.key.tmp" -subj "/O=Dray/CN=dray-broker" -out "$dir/broker.csr"
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' "$san" \
    > "$dir/broker.ext"
openssl x509 -req -in "$dir/broker.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 365 \
    -sha256 -extfile "$dir/broker.ext" -out "$dir/broker.pem.tmp" 2>/dev/null
rm -f "$dir/broker.csr" "$dir/broker.ext"
# The brokers run as uid 10001 in the image: they must read the key.
if [ "$(id -u)" = 0 ]; then
    chown 10001 "$dir/broker.key.tmp"
fi
chmod 600 "$dir/broker.key.tmp"
# Key first: a broker that sees the new key with the old certificate refuses the pair and keeps serving the old one
# until the certificate follows.
mv "$dir/broker.key.tmp" "$dir/broker.key"
mv "$dir/broker.pem.tmp" "$dir/broker.pem"
echo "$san" > "$dir/broker.san"
echo "issued $dir/broker.pem for $san"
