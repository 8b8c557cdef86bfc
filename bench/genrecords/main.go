// Command genrecords writes authorizer records straight into a Caddy
// file_system storage folder, in tptoken's on-disk format (tokensource's
// diskRecord, plain JSON, no encryption_key), as a bulk migration or a long
// history would leave them. scripts/bench-scale.sh uses it to start Caddy on
// 100,000 records.
//
//	genrecords -storage DIR -component tt0000benchtp01 -n 100000
//
// Records are named tt0000000000000 … (13 digits), active, with an access token
// valid for two more hours and a refresh token for 20 more days, so a request
// for any of them is served from storage without a platform call.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"
)

// diskRecord mirrors tokensource/record.go's diskRecord.
type diskRecord struct {
	V             int          `json:"v"`
	AppID         string       `json:"appid"`
	Family        string       `json:"family"`
	State         string       `json:"state"`
	AccessToken   string       `json:"access_token,omitempty"`
	AccessIssued  time.Time    `json:"access_issued"`
	AccessExpiry  time.Time    `json:"access_expiry"`
	RefreshToken  string       `json:"refresh_token,omitempty"`
	RefreshExpiry time.Time    `json:"refresh_expiry"`
	Permissions   []permission `json:"permissions,omitempty"`
	LastRefresh   time.Time    `json:"last_refresh"`
	AuthorizedAt  time.Time    `json:"authorized_at"`
	UpdatedAt     time.Time    `json:"updated_at"`
	Generation    uint64       `json:"generation"`
}

type permission struct {
	ID          int    `json:"id"`
	Category    string `json:"category,omitempty"`
	Description string `json:"description,omitempty"`
}

// What the platform emulator grants every authorizer.
var permissions = []permission{
	{1, "开发管理权限", "代小程序开发、提审、发布"},
	{2, "基本信息设置权限", "设置小程序名称、头像、简介"},
	{3, "运营管理权限", "管理小程序的运营"},
	{4, "数据分析权限", "查看小程序数据"},
}

func main() {
	storage := flag.String("storage", "", "Caddy file_system storage root (required)")
	component := flag.String("component", "tt0000benchtp01", "component (TP) appid")
	n := flag.Int("n", 100000, "records to write")
	family := flag.String("family", "v1", "token family: v1 or v2")
	flag.Parse()
	if *storage == "" {
		log.Fatal("genrecords: -storage is required")
	}
	dir := filepath.Join(*storage, "tptoken", *component, "authorizers")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		log.Fatal(err)
	}
	now := time.Now().UTC()
	for i := range *n {
		id := fmt.Sprintf("tt%013d", i)
		issued := now.Add(-time.Duration(i%3600) * time.Second) // spread, as real traffic leaves them
		rec := diskRecord{
			V: 1, AppID: id, Family: *family, State: "active",
			AccessToken:  fmt.Sprintf("0801121846%054d", i),
			AccessIssued: issued, AccessExpiry: issued.Add(2 * time.Hour),
			RefreshToken: fmt.Sprintf("0801121852%054d", i), RefreshExpiry: issued.Add(20 * 24 * time.Hour),
			Permissions: permissions, LastRefresh: issued, AuthorizedAt: issued.Add(-10 * 24 * time.Hour),
			UpdatedAt: issued, Generation: 1,
		}
		b, err := json.Marshal(rec)
		if err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, id+".json"), b, 0o600); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Printf("wrote %d records under %s\n", *n, dir)
}
