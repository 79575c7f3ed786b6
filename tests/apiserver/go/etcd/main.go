// etcd server built from go.etcd.io/etcd/server/v3 as a Go module dependency.
// Mirrors upstream etcd server/main.go. (`go install go.etcd.io/etcd/server/v3@vX`
// does not work because etcd's server/go.mod contains replace directives.)
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
