package secrets

import (
	"context"
	"errors"
	"fmt"

	"github.com/zalando/go-keyring"
)

// SystemKeyring is the Secret Service over D-Bus (github.com/zalando/go-keyring).
// Use it only after ProbeKeyring succeeded.
func SystemKeyring() Keyring { return systemKeyring{} }

type systemKeyring struct{}

func (systemKeyring) Get(service, user string) (string, error) {
	v, err := keyring.Get(service, user)
	if errors.Is(err, keyring.ErrNotFound) {
		return "", fmt.Errorf("%s: %w", user, ErrNotFound)
	}
	return v, err
}

func (systemKeyring) Set(service, user, value string) error { return keyring.Set(service, user, value) }

func (systemKeyring) Delete(service, user string) error {
	err := keyring.Delete(service, user)
	if errors.Is(err, keyring.ErrNotFound) {
		return fmt.Errorf("%s: %w", user, ErrNotFound)
	}
	return err
}

// ProbeKeyring checks that the Secret Service answers on the session bus
// (the caller checks first that one is configured: DBUS_SESSION_BUS_ADDRESS).
// It looks up an item that does not exist; "not found" means the service
// works. It gives up when ctx ends; the D-Bus call it started may then
// finish in the background (go-keyring takes no context).
func ProbeKeyring(ctx context.Context) error {
	done := make(chan error, 1)
	go func() {
		_, err := keyring.Get(KeyringService, "probe")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, keyring.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("secret service: %w", err)
	case <-ctx.Done():
		return fmt.Errorf("secret service did not answer: %w", ctx.Err())
	}
}
