#!/bin/sh
# A sample API of the SO1 layout, on busybox alone: `nc -ll -e` runs this script once per
# connection with the socket on stdin/stdout.
#   GET /$API/<id>/info         {"api", "id", "host"}
#   GET /$API/<id>/llamar-apiM  calls apiM's /info with the same id and returns both answers
# Env: API (api1…), PORT (listening port), APIM_ADDRS for each peer apiM: HOST:PORT
# candidates tried in order, each within CALL_TIMEOUT seconds (default 2): a peer that moved
# to another host is found at its next address.
set -u
if [ "${1:-}" != handle ]; then
    echo "$API listening on :$PORT" >&2
    exec nc -ll -p "$PORT" -e /bin/sh "$0" handle
fi

respond() { # STATUS BODY
    printf 'HTTP/1.0 %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
        "$1" "$(printf '%s' "$2" | wc -c)" "$2"
}

read -r method path _ || exit 0
# Only characters that need no escaping in the JSON answers.
path=$(printf '%s' "$path" | tr -cd 'A-Za-z0-9/_.-')
while read -r header; do
    [ -z "$(printf '%s' "$header" | tr -d '\r')" ] && break
done
host=$(hostname)
# get ADDR PATH: the body of a 200 answer to GET PATH at ADDR (HOST:PORT), within
# CALL_TIMEOUT seconds; fails otherwise. nc, not wget: busybox-static's wget crashes in an
# image without the C library's name service files.
get() {
    t=${CALL_TIMEOUT:-2}
    reply=$(printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" | timeout "$t" nc -w "$t" "${1%:*}" "${1##*:}" 2>/dev/null) || return 1
    case "$(printf '%s\n' "$reply" | head -n 1)" in
    *" 200 "*) printf '%s\n' "$reply" | tail -n 1 ;;
    *) return 1 ;;
    esac
}
info() { printf '{"api":"%s","id":"%s","host":"%s"}' "$API" "$1" "$host"; }

[ "$method" = GET ] || { respond '405 Method Not Allowed' '{"error":"GET only"}'; exit 0; }
IFS=/ read -r _ api id action <<PATH
$path
PATH
if [ "$api" != "$API" ] || [ -z "$id" ] || printf '%s' "$id" | grep -q '[^A-Za-z0-9_-]'; then
    respond '404 Not Found' "{\"error\":\"no route $path\"}"
    exit 0
fi
case "$action" in
info)
    respond '200 OK' "$(info "$id")" ;;
llamar-api[0-9])
    peer=${action#llamar-}
    # apiM's candidates are in APIM_ADDRS (M is one digit, checked by the pattern above).
    addrs=""
    eval "addrs=\${API${peer#api}_ADDRS:-}"
    for addr in $addrs; do
        if answer=$(get "$addr" "/$peer/$id/info") && [ -n "$answer" ]; then
            respond '200 OK' "{\"api\":\"$API\",\"id\":\"$id\",\"host\":\"$host\",\"called\":\"$peer\",\"via\":\"$addr\",\"self\":$(info "$id"),\"answer\":$answer}"
            exit 0
        fi
    done
    respond '502 Bad Gateway' "{\"error\":\"$peer did not answer at: $addrs\"}" ;;
*)
    respond '404 Not Found' "{\"error\":\"no route $path\"}" ;;
esac
