# Sourced by tests/apiserver/start.sh and tests/node/up.sh: free ports, the
# components as detached processes recorded in $WORK/pids and waited for, the
# cluster's CA, certificates signed by it, and kubeconfigs under $PKI
# (openssl's chatter goes to $WORK/openssl.log). Needs WORK, TIMEOUT, PKI and,
# for kubeconfig, API_PORT.

# --- free loopback ports: bind all of them at once so they are distinct ------
free_ports() { # N
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
  else # fallback: random ports that nothing answers on
    local ports=() p
    while ((${#ports[@]} < $1)); do
      p=$((20000 + RANDOM % 12000))
      [[ " ${ports[*]} " == *" $p "* ]] && continue
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
      ports+=("$p")
    done
    echo "${ports[*]}"
  fi
}

# --- processes ------------------------------------------------------------------
launch() { # NAME PATH ARGS... ; detached, all stdio redirected so callers' pipes close
  local name=$1 path=$2
  shift 2
  setsid "$path" "$@" </dev/null >"$WORK/$name.log" 2>&1 &
  echo "$! $name" >>"$WORK/pids"
}
pid_of() { awk -v n="$1" '$2 == n {print $1}' "$WORK/pids"; }
wait_ready() { # NAME CHECK-COMMAND... ; until CHECK succeeds, NAME dies or TIMEOUT passes
  local name=$1 pid deadline=$((SECONDS + TIMEOUT))
  pid="$(pid_of "$name")"
  shift
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited early; last log lines:" >&2
      tail -n 30 "$WORK/$name.log" >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "$name not ready after ${TIMEOUT}s; last log lines:" >&2
      tail -n 30 "$WORK/$name.log" >&2
      exit 1
    fi
    sleep 0.2 # poll interval of a readiness check
  done
}
body_is_ok() { [[ "$(curl -sS --max-time 5 "$@")" == ok ]]; }

# --- certificates -----------------------------------------------------------------

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
