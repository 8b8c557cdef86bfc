// Command upstream is the fast local upstream of scripts/bench-load.sh: it
// answers every request with the same small JSON success body, in the
// platform's v1 envelope, with Content-Type application/json and a
// Content-Length, so that a reverse proxy in front of it is what a load test
// measures.
//
//	upstream -listen 127.0.0.1:9001
//
// GET /_bench/stats answers how many requests arrived with and without an
// injected authorizer_access_token, so the script can check that the tptoken
// sites really injected one, and how many connections were opened to it (a
// proxy that keeps too few idle connections opens new ones under load).
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// body looks like an open-API answer: small JSON, no invalid-token code in it,
// so the tptoken transport (when it inspects answers) reads it and replays nothing.
var body = []byte(`{"errno":0,"message":"success","data":{"appid":"tt0000bench01","name":"bench","status":1,"ts":1764057600}}`)

func main() {
	listen := flag.String("listen", "127.0.0.1:9001", "address to listen on (loopback)")
	flag.Parse()
	length := strconv.Itoa(len(body))
	var withToken, without, conns atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_bench/stats" {
			fmt.Fprintf(w, "with_token %d\nwithout_token %d\nconnections %d\n", withToken.Load(), without.Load(), conns.Load())
			return
		}
		if strings.Contains(r.URL.RawQuery, "authorizer_access_token=") {
			withToken.Add(1)
		} else {
			without.Add(1)
		}
		hd := w.Header()
		hd["Content-Type"] = []string{"application/json"}
		hd["Content-Length"] = []string{length}
		_, _ = w.Write(body)
	})
	srv := &http.Server{Addr: *listen, Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		}}
	log.Fatal(srv.ListenAndServe())
}
