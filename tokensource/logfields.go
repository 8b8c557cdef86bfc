package tokensource

import "go.uber.org/zap"

func zapApp(appid string) zap.Field { return zap.String("appid", appid) }
func zapLock(name string) zap.Field { return zap.String("lock", name) }
func zapErr(err error) zap.Field    { return zap.Error(err) }
