"""LightningDataModules and the readers behind them."""
