//! RL math as free functions over tensors: advantages, policy losses, discriminator losses.
//! Never touches actors or devices.
