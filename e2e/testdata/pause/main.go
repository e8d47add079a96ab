// Command pause is the sandbox ("pause") container of the real node's
// pods: it holds the pod's namespaces and waits to be stopped. The
// registry.k8s.io image cannot be pulled here; the node test builds this
// and pushes it to the test's registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
