// Command credhelper is a Docker credential helper for the tests, built
// on the library the helpers share: for the one host it knows, it hands
// out the user "helper" and the password in $CREDHELPER_SECRET_FILE, read
// on every call (the password rotates), and counts its calls in
// $CREDHELPER_CALLS_FILE.
package main

import (
	"errors"
	"os"
	"strings"

	"github.com/docker/docker-credential-helpers/credentials"
)

type helper struct{}

func (helper) Add(*credentials.Credentials) error { return errors.New("read-only") }
func (helper) Delete(string) error                { return errors.New("read-only") }
func (helper) List() (map[string]string, error)   { return map[string]string{}, nil }

func (helper) Get(serverURL string) (string, string, error) {
	if f, err := os.OpenFile(os.Getenv("CREDHELPER_CALLS_FILE"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
		f.WriteString(serverURL + "\n")
		f.Close()
	}
	if !strings.Contains(serverURL, os.Getenv("CREDHELPER_HOST")) {
		return "", "", credentials.NewErrCredentialsNotFound()
	}
	secret, err := os.ReadFile(os.Getenv("CREDHELPER_SECRET_FILE"))
	if err != nil {
		return "", "", err
	}
	return "helper", strings.TrimSpace(string(secret)), nil
}

func main() { credentials.Serve(helper{}) }
