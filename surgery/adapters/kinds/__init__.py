"""Adapter kinds that fold into weights, one module each: LoRA, DoRA, IA3, VeRA."""
