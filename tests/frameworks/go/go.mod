module stagegate.test/deals

go 1.19
