// Command pause is the end-to-end cluster's pod sandbox image: it holds a
// pod's namespaces open until the kubelet stops it. Given files, it first
// copies each to standard output, so that a test's Pod shows what it
// reads in its log; a file it cannot read ends it with an error.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	for _, name := range os.Args[1:] {
		if err := copyOut(name); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	<-stop
}

func copyOut(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(os.Stdout, f)
	return err
}
