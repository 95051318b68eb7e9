package settings

import (
	"encoding/json"
	"errors"
	"strings"
)

// List is a repeatable flag of plain values (--allow a --allow b): each
// value given adds to it; in a file it is a list of strings.
type List []string

// String implements flag.Value; Set reads it back.
func (l *List) String() string { return strings.Join(*l, "\n") }

// Set implements flag.Value.
func (l *List) Set(v string) error {
	for _, line := range strings.Split(v, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			*l = append(*l, line)
		}
	}
	return nil
}

// UnmarshalJSON reads a list of strings.
func (l *List) UnmarshalJSON(b []byte) error {
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("want a list of strings")
	}
	*l = many
	return nil
}
