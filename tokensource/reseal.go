package tokensource

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// ResealReport is what Reseal did.
type ResealReport struct {
	ComponentAppID string `json:"component_appid"`
	KeyID          string `json:"key_id"`          // key id of encryption_key, which sealed the records
	Resealed       int    `json:"resealed"`        // records sealed again with encryption_key
	Current        int    `json:"already_current"` // records already sealed with it
	Failed         int    `json:"failed"`
	// Errors are the first failures (at most maxResealErrors); storage keys
	// name confirmed appids only (records on file).
	Errors []string `json:"errors,omitempty"`
}

const maxResealErrors = 20

// Reseal rewrites every stored record of this component (authorizers, ticket,
// component tokens, the code index, the pushes handled) that is plain or sealed
// with a previous key, sealing it with the current encryption key: after it,
// the previous keys can be dropped from the configuration. Each authorizer
// record and component token is rewritten under its storage lock, reloaded
// first, so a refresh running at the same time is never overwritten; the
// ticket, the code index and the pushes handled have no lock and are rewritten
// only if unchanged since read. Running it again does nothing.
func (e *Engine) Reseal(ctx context.Context) (ResealReport, error) {
	rep := ResealReport{ComponentAppID: e.cfg.ComponentAppID}
	if e.codec.cur == nil {
		return rep, &Error{Kind: KindBadInput, Msg: "no encryption_key is configured: there is no key to seal records with"}
	}
	rep.KeyID = e.codec.cur.id
	done, err := e.beginUnbounded()
	if err != nil {
		return rep, err
	}
	defer done()

	one := func(key, lock string) {
		resealed, err := e.resealOne(ctx, key, lock)
		switch {
		case err != nil:
			rep.Failed++
			if len(rep.Errors) < maxResealErrors {
				rep.Errors = append(rep.Errors, fmt.Sprintf("%s: %v", key, err))
			}
		case resealed:
			rep.Resealed++
		default:
			rep.Current++
		}
	}
	ids, err := e.appIDs(ctx)
	if err != nil {
		return rep, &Error{Kind: KindUnavailable, Msg: "listing authorizer records failed", RetryAfter: 5 * time.Second, Err: err}
	}
	for _, id := range ids {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		one(e.keys.authorizer(id), e.keys.authorizerLock(id))
	}
	for _, f := range []Family{V1, V2} {
		one(e.keys.componentToken(f), e.keys.componentTokenLock(f))
	}
	one(e.keys.ticket(), "")
	for _, dir := range []string{e.keys.codeDir(), e.keys.pushDir()} {
		if list, err := e.store.List(ctx, dir, false); err == nil {
			for _, key := range list {
				one(key, "")
			}
		}
	}
	e.log.Info("records re-sealed with the current encryption key", zap.String("key_id", rep.KeyID),
		zap.Int("resealed", rep.Resealed), zap.Int("already_current", rep.Current), zap.Int("failed", rep.Failed))
	return rep, nil
}

// resealOne seals the record at key with the current key unless it already
// is; a missing record counts as current. lock, when set, guards the key.
func (e *Engine) resealOne(ctx context.Context, key, lock string) (bool, error) {
	if lock != "" {
		release, err := e.acquire(ctx, lock)
		if err != nil {
			return false, err
		}
		defer release()
	}
	b, err := e.store.Load(ctx, key)
	if err != nil {
		if isNotExist(err) {
			return false, nil
		}
		return false, err
	}
	var raw json.RawMessage
	state, err := e.codec.decodeSeal(key, b, &raw)
	if err != nil {
		return false, err
	}
	if state == sealCurrent {
		return false, nil
	}
	sealedAgain, err := e.codec.encode(key, raw)
	if err != nil {
		return false, err
	}
	if lock == "" {
		// No lock guards this key: a write since the read used the current
		// key already, and must not be replaced by the older content.
		if now, err := e.store.Load(ctx, key); err != nil || !bytes.Equal(now, b) {
			return false, nil
		}
	}
	return true, e.store.Store(ctx, key, sealedAgain)
}

// beginUnbounded registers a long operation (not bounded by OpTimeout: each
// of its steps is); it fails once the engine is closed.
func (e *Engine) beginUnbounded() (func(), error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, errClosed
	}
	e.wg.Add(1)
	return e.wg.Done, nil
}
