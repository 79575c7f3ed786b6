# Sourced by tests/apiserver/start.sh and tests/node/up.sh: the cluster's CA,
# certificates signed by it, and kubeconfigs, under $PKI (openssl's chatter
# goes to $WORK/openssl.log). Needs PKI, WORK and, for kubeconfig, API_PORT.

ssl() { openssl "$@" 2>>"$WORK/openssl.log"; }

pki_ca() { # the self-signed CA: $PKI/ca.{crt,key}
  ssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=logstream-test-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}

# Extensions of a client certificate.
CLIENT_EXT="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

# Extensions of a serving certificate for SANS (e.g. "IP:127.0.0.1,DNS:localhost").
server_ext() {
  printf '%s\n' "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$1"
}

sign() { # NAME SUBJECT EXTENSIONS: $PKI/NAME.{crt,key}
  ssl req -new -newkey rsa:2048 -nodes -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr"
  printf '%s\n' "$3" >"$PKI/$1.ext"
  ssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$PKI/$1.ext" -out "$PKI/$1.crt"
  rm -f "$PKI/$1.csr" "$PKI/$1.ext"
}

pki_service_accounts() { # the ServiceAccount token signing key: $PKI/sa.{key,pub}
  ssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key"
  ssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
  chmod 600 "$PKI"/*.key
}

kubeconfig() { # FILE USER: USER's client certificate against https://127.0.0.1:$API_PORT
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: logstream-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$2.crt")
    client-key-data: $(base64 -w0 <"$PKI/$2.key")
contexts:
- name: logstream-test
  context:
    cluster: logstream-test
    user: $2
current-context: logstream-test
KC
  chmod 600 "$1"
}
