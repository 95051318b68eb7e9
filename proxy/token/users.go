package token

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// Users are the people who may log in, with bcrypt hashes of their
// passwords.
type Users struct {
	hashes map[string][]byte
	// credentials fingerprint each user's secret as it was given (a
	// plain password, or a hash from htpasswd), keyed: the same on every
	// replica and after a restart, whatever salt a plain password got
	// when it was hashed here, and of no use to guess it from.
	credentials map[string]string
	credKey     []byte
	// dummy is compared against for unknown users, so that a failed
	// login takes as long whether or not the user exists.
	dummy []byte
}

// LoadUsers reads an htpasswd file (user:bcrypt-hash lines) or a
// directory holding one file per user (a mounted Secret), whose content is
// a bcrypt hash or a plain password; plain ones are hashed on load and
// never kept. credentialKey keys the fingerprints refresh tokens carry:
// replicas that share it (the token key's bytes) accept each other's.
func LoadUsers(path string, credentialKey []byte) (*Users, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("users: %w", err)
	}
	mac := hmac.New(sha256.New, []byte("depproxy credentials"))
	mac.Write(credentialKey)
	u := &Users{hashes: map[string][]byte{}, credentials: map[string]string{}, credKey: mac.Sum(nil)}
	if st.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("users: %w", err)
		}
		for _, e := range entries {
			if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
				continue // a mounted Secret's ..data links
			}
			raw, err := os.ReadFile(filepath.Join(path, e.Name()))
			if err != nil {
				return nil, fmt.Errorf("users: %w", err)
			}
			if err := u.add(e.Name(), bytes.TrimRight(raw, "\r\n")); err != nil {
				return nil, err
			}
		}
	} else {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("users: %w", err)
		}
		sc := bufio.NewScanner(bytes.NewReader(raw))
		for line := 1; sc.Scan(); line++ {
			text := strings.TrimSpace(sc.Text())
			if text == "" || strings.HasPrefix(text, "#") {
				continue
			}
			user, hash, ok := strings.Cut(text, ":")
			if !ok || !isBcrypt([]byte(hash)) {
				return nil, fmt.Errorf("users: %s line %d: want user:bcrypt-hash (htpasswd -B)", path, line)
			}
			if err := u.add(user, []byte(hash)); err != nil {
				return nil, err
			}
		}
	}
	if len(u.hashes) == 0 {
		return nil, fmt.Errorf("users: %s has no users", path)
	}
	// Unknown users are checked against a hash of the cost most users'
	// hashes have: a failed login takes as long whether or not the user
	// exists (htpasswd -B makes cost 5, Go's default is 10).
	u.dummy, _ = bcrypt.GenerateFromPassword([]byte("no such user"), u.commonCost())
	return u, nil
}

// commonCost is the bcrypt cost most hashes have; the higher on a tie.
func (u *Users) commonCost() int {
	count := map[int]int{}
	best := bcrypt.DefaultCost
	for _, h := range u.hashes {
		c, _ := bcrypt.Cost(h)
		count[c]++
		if count[c] > count[best] || (count[c] == count[best] && c > best) {
			best = c
		}
	}
	return best
}

// Credential fingerprints a user's current secret ("" for no such
// user): refresh tokens carry it, so that a changed password or a removed
// user revokes them.
func (u *Users) Credential(user string) string {
	if u == nil {
		return ""
	}
	return u.credentials[user]
}

func (u *Users) add(user string, secret []byte) error {
	if user == "" || len(secret) == 0 {
		return errors.New("users: an empty user name or password")
	}
	mac := hmac.New(sha256.New, u.credKey)
	mac.Write([]byte(user + "\n"))
	mac.Write(secret)
	u.credentials[user] = hex.EncodeToString(mac.Sum(nil)[:8])
	if isBcrypt(secret) {
		u.hashes[user] = secret
		return nil
	}
	hash, err := bcrypt.GenerateFromPassword(secret, bcrypt.DefaultCost)
	if err != nil {
		return fmt.Errorf("users: hashing %s's password: %w", user, err)
	}
	u.hashes[user] = hash
	return nil
}

func isBcrypt(b []byte) bool {
	_, err := bcrypt.Cost(b)
	return err == nil
}

// Check reports whether the password is the user's.
func (u *Users) Check(user, password string) bool {
	hash, ok := u.hashes[user]
	if !ok {
		hash = u.dummy
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	return ok && err == nil
}
