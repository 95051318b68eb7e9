package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/depproxy/depproxy/proxy/nodeconfig"
)

// hostsCommand writes (or, with --remove, takes out) the files that make
// a node's container runtime pull the registries through the cache.
func hostsCommand(args []string) error {
	fs := flag.NewFlagSet("depproxy hosts", flag.ExitOnError)
	var nf nodeFlags
	nf.register(fs)
	remove := fs.Bool("remove", false, "take the files out, and put back what was there before")
	if err := fs.Parse(args); err != nil {
		return err
	}
	files, err := nf.files()
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range files {
		if *remove {
			err = nodeconfig.Remove(f.Path)
		} else {
			err = f.Put()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.Path, err))
			continue
		}
		fmt.Fprintln(os.Stdout, map[bool]string{true: "removed", false: "wrote"}[*remove], f.Path)
	}
	return errors.Join(errs...)
}
