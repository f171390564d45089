"""Networks (plain ``nn.Module``) and the LightningModules that train them."""
