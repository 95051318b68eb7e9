package settings

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// WriteFlagTable writes the Markdown table of `depproxy serve`'s flags,
// each with its default and meaning as -h says them: the configuration
// page's, so that the page cannot drift from the flags.
func WriteFlagTable(w io.Writer) {
	s := Defaults()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	s.Bind(fs)
	fs.String("config", "", configUsage)
	fmt.Fprintln(w, "| flag | default | meaning |")
	fmt.Fprintln(w, "|---|---|---|")
	fs.VisitAll(func(f *flag.Flag) {
		def := ""
		if f.DefValue != "" && f.DefValue != "false" {
			def = "`" + f.DefValue + "`"
		}
		fmt.Fprintf(w, "| `--%s` | %s | %s |\n", f.Name, def, strings.ReplaceAll(f.Usage, "|", `\|`))
	})
}
